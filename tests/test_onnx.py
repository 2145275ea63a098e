"""ONNX export and the onnxruntime predictor: agreement with PyTorch and the reference, official files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from edgesam_backend.runtime.base import ImageEmbedding
from edgesam_backend.runtime.predictor import OnnxModelError, OnnxPredictor
from edgesam_backend.runtime.prompts import PromptError, pack_prompt

from .conftest import INPUT_HW, ORIGINAL_HW, PROMPTS, REF, requires_shared

pytestmark = requires_shared


def ref_embedding(ref_vectors) -> ImageEmbedding:
    return ImageEmbedding(ref_vectors["image_embeddings"], ORIGINAL_HW, INPUT_HW)


def test_encoder_graph_is_reparameterised_bicubic(onnx_dir):
    m = onnx.load(str(onnx_dir / "encoder.onnx"))
    ops = [n.op_type for n in m.graph.node]
    assert "Resize" not in ops and "BatchNormalization" not in ops
    assert ops.count("DepthToSpace") == 1
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["edgesam.upsample_mode"] == "bicubic"
    assert meta["edgesam.role"] == "encoder"
    assert len(meta["edgesam.checkpoint_sha256"]) == 64


def test_decoder_io_contract(onnx_dir):
    m = onnx.load(str(onnx_dir / "decoder.onnx"))
    inputs = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
    }
    assert inputs == {
        "image_embeddings": [1, 256, 64, 64],
        "point_coords": ["num_prompts", "num_points", 2],
        "point_labels": ["num_prompts", "num_points"],
        "mask_input": ["num_prompts", 1, 256, 256],
        "has_mask_input": ["num_prompts"],
    }
    assert [o.name for o in m.graph.output] == ["low_res_logits", "iou_predictions", "stability_scores"]


def test_onnx_encoder_matches_reference(onnx_predictor, ref_inputs, ref_vectors):
    emb = onnx_predictor._encode_tensor(ref_inputs["input_tensor"])
    np.testing.assert_allclose(emb, ref_vectors["image_embeddings"], rtol=0, atol=1e-4)


def test_onnx_end_to_end_from_image(onnx_predictor, ref_inputs, ref_vectors):
    emb = onnx_predictor.encode(ref_inputs["orig_image_rgb_uint8"])
    for name in PROMPTS:
        pred = onnx_predictor.predict(
            **PROMPTS[name], num_multimask_outputs=1, return_logits=True, embedding=emb
        )
        np.testing.assert_allclose(
            pred.logits, ref_vectors[f"{name}__k1__masks_logits"][0], rtol=0, atol=1e-3
        )


def test_batched_prompts_equal_single_prompts(onnx_predictor, ref_vectors):
    emb = ref_embedding(ref_vectors)
    packed = [pack_prompt([[x, y]], [1], None, ORIGINAL_HW) for x, y in [(500, 375), (1125, 625), (300, 900)]]
    coords = np.concatenate([c for c, _ in packed])
    labels = np.concatenate([lab for _, lab in packed])
    low, iou, stab = onnx_predictor.predict_low_res(coords, labels, embedding=emb)
    assert low.shape == (3, 4, 256, 256) and iou.shape == stab.shape == (3, 4)
    for i, (c, lab) in enumerate(packed):
        l1, i1, _ = onnx_predictor.predict_low_res(c, lab, embedding=emb)
        np.testing.assert_allclose(low[i], l1[0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(iou[i], i1[0], rtol=0, atol=1e-5)


def test_mask_input_refinement_matches_torch(onnx_predictor, torch_predictor, ref_vectors):
    emb = ref_embedding(ref_vectors)
    first = torch_predictor.predict(**PROMPTS["a_point"], num_multimask_outputs=1, embedding=emb)
    kw = {
        "point_coords": [[500, 375], [575, 750]],
        "point_labels": [1, 0],
        "mask_input": first.low_res_logits,
    }
    t = torch_predictor.predict(**kw, num_multimask_outputs=4, embedding=emb)
    o = onnx_predictor.predict(**kw, num_multimask_outputs=4, embedding=emb)
    np.testing.assert_allclose(o.low_res_logits, t.low_res_logits, rtol=0, atol=1e-4)
    # the mask input must matter
    plain = onnx_predictor.predict(
        kw["point_coords"], kw["point_labels"], num_multimask_outputs=4, embedding=emb
    )
    assert np.abs(plain.low_res_logits - o.low_res_logits).max() > 1e-2


def test_concurrent_predicts_are_consistent(onnx_predictor, ref_vectors):
    emb = ref_embedding(ref_vectors)
    prompts = [dict(point_coords=[[100 + 60 * i, 80 + 50 * i]], point_labels=[1]) for i in range(12)]
    serial = [onnx_predictor.predict(**p, embedding=emb).low_res_logits for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(
            pool.map(lambda p: onnx_predictor.predict(**p, embedding=emb).low_res_logits, prompts)
        )
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


# --- the official ONNX format ----------------------------------------------------------------


@pytest.fixture(scope="module")
def official_predictor():
    return OnnxPredictor(REF / "official_format_encoder.onnx", REF / "official_format_decoder.onnx")


def test_official_flavour_detected(official_predictor):
    assert official_predictor.flavour == "official"
    assert official_predictor.supports_mask_input is False


def test_official_encoder(official_predictor, ref_inputs):
    with np.load(REF / "official_format_encoder_outputs.npz") as z:
        expected = z["image_embeddings_ort"]
    emb = official_predictor._encode_tensor(ref_inputs["input_tensor"])
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_official_decoder_matches_pytorch_predictor(official_predictor, ref_vectors, name):
    """Our packing adds the (0,0)/-1 padding point the official export leaves to the caller."""
    pred = official_predictor.predict(
        **PROMPTS[name], num_multimask_outputs=4, embedding=ref_embedding(ref_vectors)
    )
    np.testing.assert_allclose(
        pred.low_res_logits, ref_vectors[f"{name}__k4__low_res_logits"][0], atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        pred.stability_scores, ref_vectors[f"{name}__k4__stability_scores"][0], atol=1e-4
    )
    assert np.isnan(pred.iou_predictions).all()  # a stability-score export carries no IoU output
    with np.load(REF / "official_format_decoder_outputs.npz") as z:
        coords, labels = pack_prompt(
            PROMPTS[name].get("point_coords"),
            PROMPTS[name].get("point_labels"),
            PROMPTS[name].get("box"),
            ORIGINAL_HW,
        )
        np.testing.assert_array_equal(coords, z[f"{name}__onnx_point_coords"])
        np.testing.assert_array_equal(labels, z[f"{name}__onnx_point_labels"])
        np.testing.assert_allclose(pred.low_res_logits, z[f"{name}__onnx_masks"][0], atol=1e-5, rtol=0)


def test_official_decoder_refuses_mask_input(official_predictor, ref_vectors):
    with pytest.raises(PromptError, match="no mask input"):
        official_predictor.predict(
            **PROMPTS["a_point"],
            mask_input=np.zeros((1, 256, 256), np.float32),
            embedding=ref_embedding(ref_vectors),
        )


def test_unrecognised_and_missing_onnx_files(tmp_path, onnx_dir):
    with pytest.raises(OnnxModelError, match="not found"):
        OnnxPredictor(tmp_path / "nope.onnx", onnx_dir / "decoder.onnx")
    # the encoder file given as decoder: wrong inputs
    with pytest.raises(OnnxModelError, match="unrecognised EdgeSAM decoder"):
        OnnxPredictor(onnx_dir / "encoder.onnx", onnx_dir / "encoder.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(OnnxModelError, match="cannot load"):
        OnnxPredictor(onnx_dir / "encoder.onnx", bad)


def test_decoder_without_memory_arena_gives_identical_results(onnx_dir, onnx_predictor, ref_vectors):
    lean = OnnxPredictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx", decoder_mem_arena=False)
    emb = ref_embedding(ref_vectors)
    a = lean.predict(**PROMPTS["c_points"], num_multimask_outputs=4, embedding=emb)
    b = onnx_predictor.predict(**PROMPTS["c_points"], num_multimask_outputs=4, embedding=emb)
    np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
    assert lean.decoder.get_session_options().enable_cpu_mem_arena is False
