"""The reassociated decoder (model/fast_decoder.py) computes PyTorch's MaskDecoder, in torch and in ONNX."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgesam_backend.export.onnx import DecoderOnnxModel, export_decoder
from edgesam_backend.model.checkpoint import load_edge_sam
from edgesam_backend.model.fast_decoder import FastDecoderOnnxModel
from edgesam_backend.runtime.base import pack_prompt
from edgesam_backend.runtime.masks import stability_score

from .conftest import CHECKPOINT, ORIGINAL_HW, PROMPTS, requires_shared

pytestmark = requires_shared
INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")


@pytest.fixture(scope="module")
def model():
    return load_edge_sam(CHECKPOINT)


def mask_decoder_reference(model, emb, coords, labels, mask, has):
    """PyTorch MaskDecoder.predict_masks on the prompt encoder's sparse/dense embeddings."""
    pe, md = model.prompt_encoder, model.mask_decoder
    with torch.inference_mode():
        sparse = pe.embed_points(torch.from_numpy(coords), torch.from_numpy(labels), pad=False)
        dense = torch.cat(
            [
                pe.embed_masks(torch.from_numpy(mask[i : i + 1]))
                if has[i]
                else pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 64, 64)
                for i in range(len(has))
            ]
        )
        low, iou = md.predict_masks(torch.from_numpy(emb), pe.get_dense_pe(), sparse, dense)
    return low.numpy(), iou.numpy()


def prompt_batch(b: int):
    """``b`` prompts of one point count: point / box / points, the later ones with a mask input."""
    kinds = [
        pack_prompt(
            PROMPTS["c_points"]["point_coords"], PROMPTS["c_points"]["point_labels"], None, ORIGINAL_HW
        ),
        pack_prompt([[500, 375], [900, 500]], [1, 0], PROMPTS["b_box"]["box"], ORIGINAL_HW),
        pack_prompt([[1125, 625], [300, 900], [575, 750]], [1, 0, 1], None, ORIGINAL_HW),
    ]
    assert len({c.shape for c, _ in kinds}) == 1  # (1, 4, 2): 3 points + pad, or 2 points + 2 corners
    coords = np.concatenate([kinds[i % 3][0] for i in range(b)]).astype(np.float32)
    labels = np.concatenate([kinds[i % 3][1] for i in range(b)]).astype(np.float32)
    rng = np.random.default_rng(b)
    mask = (4 * rng.standard_normal((b, 1, 256, 256))).astype(np.float32)
    has = (np.arange(b) % 2 == 1).astype(np.float32)  # B=1: no mask; B=3: the middle prompt has one
    return coords, labels, mask, has


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("with_mask", [False, True])
def test_torch_fast_decoder_matches_mask_decoder(model, ref_vectors, b, with_mask):
    emb = ref_vectors["image_embeddings"]
    coords, labels, mask, has = prompt_batch(b)
    if with_mask:
        has = np.ones(b, np.float32)
    fast = FastDecoderOnnxModel(model.prompt_encoder, model.mask_decoder).eval()
    with torch.inference_mode():
        low, iou, stab = (
            t.numpy() for t in fast(*(torch.from_numpy(a) for a in (emb, coords, labels, mask, has)))
        )
    ref_low, ref_iou = mask_decoder_reference(model, emb, coords, labels, mask, has)
    assert low.shape == (b, 4, 256, 256) and iou.shape == stab.shape == (b, 4)
    np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-4)
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=1e-5)
    np.testing.assert_allclose(stab, stability_score(ref_low), rtol=0, atol=1e-3)
    if with_mask:  # the mask input must matter
        plain_low, _ = mask_decoder_reference(model, emb, coords, labels, mask, np.zeros(b, np.float32))
        assert np.abs(plain_low - ref_low).max() > 1e-2


@pytest.mark.parametrize("name", list(PROMPTS))
def test_fast_decoder_reproduces_official_reference(model, ref_vectors, name):
    """All four tokens against the official code's own low-res logits and IoU (reference prompts)."""
    pr = PROMPTS[name]
    coords, labels = pack_prompt(pr.get("point_coords"), pr.get("point_labels"), pr.get("box"), ORIGINAL_HW)
    fast = FastDecoderOnnxModel(model.prompt_encoder, model.mask_decoder).eval()
    args = (
        ref_vectors["image_embeddings"],
        coords.astype(np.float32),
        labels.astype(np.float32),
        np.zeros((1, 1, 256, 256), np.float32),
        np.zeros(1, np.float32),
    )
    with torch.inference_mode():
        low, iou, _ = fast(*(torch.from_numpy(a) for a in args))
    np.testing.assert_allclose(low.numpy(), ref_vectors[f"{name}__k4__low_res_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(iou.numpy(), ref_vectors[f"{name}__k4__iou_predictions"], rtol=0, atol=1e-5)


def test_fast_decoder_does_half_the_work(model, ref_vectors):
    """Matrix-product FLOPs per prompt (B=1 vs B=9): the fast graph needs < 60 % of the plain one."""
    from torch.utils.flop_counter import FlopCounterMode

    def per_prompt(w) -> float:
        counts = []
        for b in (1, 9):
            coords, labels, mask, has = prompt_batch(b)
            args = (ref_vectors["image_embeddings"], coords, labels, mask, has)
            with torch.inference_mode(), FlopCounterMode(display=False) as fc:
                w.eval()(*(torch.from_numpy(a) for a in args))
            counts.append(fc.get_total_flops())
        return (counts[1] - counts[0]) / 8

    fast = per_prompt(FastDecoderOnnxModel(model.prompt_encoder, model.mask_decoder))
    plain = per_prompt(DecoderOnnxModel(model))
    assert fast < 0.6 * plain, (fast, plain)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("fastdec")
    paths = {"fast": out / "fast.onnx", "plain": out / "plain.onnx"}
    for name, p in paths.items():
        export_decoder(model, p, fast=name == "fast")
    return paths


def test_exported_fast_decoder_matches_pytorch(model, ref_vectors, exported):
    s = ort.InferenceSession(str(exported["fast"]), providers=["CPUExecutionProvider"])
    emb = ref_vectors["image_embeddings"]
    for b in (1, 3):
        coords, labels, mask, has = prompt_batch(b)
        low, iou, stab = s.run(None, dict(zip(INPUTS, (emb, coords, labels, mask, has), strict=True)))
        ref_low, ref_iou = mask_decoder_reference(model, emb, coords, labels, mask, has)
        np.testing.assert_allclose(low, ref_low, rtol=0, atol=1e-4)
        np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=1e-5)
        np.testing.assert_allclose(stab, stability_score(ref_low), rtol=0, atol=1e-3)


def test_plain_and_fast_exports_share_the_io_contract(ref_vectors, exported):
    def io(p):
        m = onnx.load(str(p))
        dims = lambda vi: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]  # noqa: E731
        return [(i.name, dims(i)) for i in m.graph.input], [(o.name, dims(o)) for o in m.graph.output]

    (fast_in, fast_out), (plain_in, plain_out) = io(exported["fast"]), io(exported["plain"])
    assert fast_in == plain_in
    assert [n for n, _ in fast_out] == [n for n, _ in plain_out]
    assert fast_out == [  # the fast graph's output shapes are fully known (the plain one's are symbolic)
        ("low_res_logits", ["num_prompts", 4, 256, 256]),
        ("iou_predictions", ["num_prompts", 4]),
        ("stability_scores", ["num_prompts", 4]),
    ]
    coords, labels, mask, has = prompt_batch(3)
    feed = dict(zip(INPUTS, (ref_vectors["image_embeddings"], coords, labels, mask, has), strict=True))
    outs = [
        ort.InferenceSession(str(exported[k]), providers=["CPUExecutionProvider"]).run(None, feed)
        for k in exported
    ]
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=0, atol=1e-4)


def test_default_export_writes_the_fast_decoder(onnx_dir):
    """``export_onnx`` (validated against PyTorch) writes the fast graph by default and says so."""
    m = onnx.load(str(onnx_dir / "decoder.onnx"))
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["edgesam.decoder_graph"] == "fast"
    assert "ConvTranspose" not in {n.op_type for n in m.graph.node}  # upscaling as matrix products
