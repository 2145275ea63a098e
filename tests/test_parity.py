"""The PyTorch model reproduces the official implementation's reference outputs, stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_backend.model.checkpoint import load_edge_sam
from edgesam_backend.model.edge_sam import build_edge_sam
from edgesam_backend.runtime import transforms
from edgesam_backend.runtime.base import ImageEmbedding

from .conftest import CHECKPOINT, INPUT_HW, ORIGINAL_HW, PROMPTS, REF, requires_shared

pytestmark = requires_shared


@pytest.fixture(scope="module")
def model():
    return load_edge_sam(CHECKPOINT)


def ref_embedding(ref_vectors) -> ImageEmbedding:
    return ImageEmbedding(ref_vectors["image_embeddings"], ORIGINAL_HW, INPUT_HW)


def test_state_dict_layout_matches_official_key_list():
    rows = [line.split("\t") for line in (REF / "state_dict_keys.tsv").read_text().splitlines()[1:]]
    sd = build_edge_sam().state_dict()
    assert list(sd) == [r[0] for r in rows]  # same keys, same order
    for key, shape, dtype, _kind in rows:
        t = sd[key]
        assert ("x".join(map(str, t.shape)) or "scalar") == shape, key
        assert str(t.dtype).removeprefix("torch.") == dtype, key


def test_parameter_counts(model):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) == 9_582_112
    assert count(model.image_encoder) == 5_517_552
    assert count(model.prompt_encoder) == 6_220
    assert count(model.mask_decoder) == 4_058_340


def test_preprocessing_is_exact(ref_inputs):
    img = ref_inputs["orig_image_rgb_uint8"]
    assert transforms.preprocess_shape(*img.shape[:2]) == tuple(ref_inputs["input_size_hw"])
    resized = transforms.resize_longest_side(img)
    np.testing.assert_array_equal(resized, ref_inputs["resized_image_rgb_uint8"])
    x, input_hw = transforms.preprocess(img)
    assert input_hw == INPUT_HW
    np.testing.assert_array_equal(x, ref_inputs["input_tensor"])


def test_image_embeddings(model, ref_inputs, ref_vectors):
    with torch.inference_mode():
        emb = model.image_encoder(torch.from_numpy(ref_inputs["input_tensor"])).numpy()
    np.testing.assert_allclose(emb, ref_vectors["image_embeddings"], rtol=0, atol=1e-4)


def test_bilinear_encoder_matches_official_bilinear(ref_inputs):
    m = load_edge_sam(CHECKPOINT, upsample_mode="bilinear")
    with np.load(REF / "official_format_encoder_outputs.npz") as z:
        expected = z["image_embeddings_torch_bilinear"]
    with torch.inference_mode():
        emb = m.image_encoder(torch.from_numpy(ref_inputs["input_tensor"])).numpy()
    np.testing.assert_allclose(emb, expected, rtol=0, atol=1e-4)


def test_dense_pe(model, ref_vectors):
    with torch.inference_mode():
        pe = model.prompt_encoder.get_dense_pe().numpy()
    np.testing.assert_allclose(pe, ref_vectors["dense_pe"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_sparse_embeddings_official_forward(model, ref_vectors, name):
    """The prompt encoder's SAM-style forward (points padded when there is no box; box corners)."""
    pe = model.prompt_encoder
    with torch.inference_mode():
        if name == "b_box":
            sparse, dense = pe(
                points=None, boxes=torch.from_numpy(ref_vectors[f"{name}__box_model"]), masks=None
            )
        else:
            pts = (
                torch.from_numpy(ref_vectors[f"{name}__point_coords_model"]),
                torch.from_numpy(ref_vectors[f"{name}__point_labels"]),
            )
            sparse, dense = pe(points=pts, boxes=None, masks=None)
    np.testing.assert_allclose(sparse.numpy(), ref_vectors[f"{name}__sparse_embeddings"], rtol=0, atol=1e-5)
    assert dense.shape == (1, 256, 64, 64)


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompt_coordinates(ref_vectors, name):
    if name == "b_box":
        got = transforms.apply_boxes(ref_vectors[f"{name}__box"], ORIGINAL_HW)
        np.testing.assert_array_equal(got, ref_vectors[f"{name}__box_model"])
    else:
        got = transforms.apply_coords(ref_vectors[f"{name}__point_coords"], ORIGINAL_HW)
        np.testing.assert_array_equal(got, ref_vectors[f"{name}__point_coords_model"])


#: IoU tolerance per back end: PyTorch reproduces the reference bitwise, onnxruntime to ~6e-6.
IOU_ATOL = {"torch_predictor": 1e-5, "onnx_predictor": 1e-4}


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("name", list(PROMPTS))
@pytest.mark.parametrize("backend", list(IOU_ATOL))
def test_decoder_outputs(request, ref_vectors, backend, name, k):
    """Both predictors, fed the reference embeddings, reproduce the official decoder outputs."""
    predictor = request.getfixturevalue(backend)
    pred = predictor.predict(**PROMPTS[name], num_multimask_outputs=k, embedding=ref_embedding(ref_vectors))
    pre = f"{name}__k{k}__"
    np.testing.assert_allclose(pred.low_res_logits, ref_vectors[pre + "low_res_logits"][0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(
        pred.iou_predictions, ref_vectors[pre + "iou_predictions"][0], rtol=0, atol=IOU_ATOL[backend]
    )
    np.testing.assert_allclose(
        pred.stability_scores, ref_vectors[pre + "stability_scores"][0], rtol=0, atol=1e-4
    )
    ref_masks = ref_vectors[pre + "masks"][0]
    assert pred.masks.shape == ref_masks.shape == (k, *ORIGINAL_HW)
    # masks may differ only where the reference logit is within float noise of the threshold
    if k == 1:
        ref_logits = ref_vectors[f"{name}__k1__masks_logits"][0]
        assert np.all(np.abs(ref_logits[pred.masks != ref_masks]) < 1e-3)
    else:
        assert (pred.masks != ref_masks).mean() < 1e-5


@pytest.mark.parametrize("name", list(PROMPTS))
def test_upscaled_logits(ref_vectors, name):
    low = ref_vectors[f"{name}__k1__low_res_logits"][0]
    up = transforms.upscale_logits(low, INPUT_HW, ORIGINAL_HW)
    np.testing.assert_allclose(up, ref_vectors[f"{name}__k1__masks_logits"][0], rtol=0, atol=1e-4)


def test_num_multimask_outputs_rejects_other_values(torch_predictor, ref_vectors):
    with pytest.raises(ValueError, match="1, 3 or 4"):
        torch_predictor.predict(
            **PROMPTS["a_point"], num_multimask_outputs=2, embedding=ref_embedding(ref_vectors)
        )


@pytest.mark.parametrize("name", list(PROMPTS))
def test_end_to_end_from_image_file(torch_predictor, ref_vectors, name):
    """Decode the JPEG ourselves, encode, decode: agrees with the official pipeline end to end."""
    from edgesam_backend.runtime.image import load_image

    from .conftest import IMAGES

    image = load_image(IMAGES / "truck.jpg")
    assert image.shape == (*ORIGINAL_HW, 3)
    emb = torch_predictor.encode(image)
    pred = torch_predictor.predict(
        **PROMPTS[name], num_multimask_outputs=1, return_logits=True, embedding=emb
    )
    np.testing.assert_allclose(pred.logits, ref_vectors[f"{name}__k1__masks_logits"][0], rtol=0, atol=1e-3)


def test_label_minus_two_zeroes_the_token(model):
    pe = model.prompt_encoder
    coords = torch.tensor([[[100.0, 200.0], [0.0, 0.0]]])
    with torch.inference_mode():
        tok = pe.embed_points(coords, torch.tensor([[1.0, -2.0]]), pad=False)
    assert torch.count_nonzero(tok[0, 1]) == 0
    assert torch.count_nonzero(tok[0, 0]) > 0


def test_box_labels_extension(model):
    pe = model.prompt_encoder
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0], [5.0, 5.0, 50.0, 50.0]])
    with torch.inference_mode():
        tok = pe.embed_boxes(boxes, torch.tensor([1, -1]))
        plain = pe.embed_boxes(boxes)
    torch.testing.assert_close(tok[0], plain[0])
    torch.testing.assert_close(tok[1], pe.not_a_point_embed.weight.expand(2, -1))


def test_box_as_corner_points_equals_box_path(model):
    """The decoder's box-as-points (labels 2/3) equals the prompt encoder's box path bitwise."""
    pe = model.prompt_encoder
    box = torch.tensor([[241.77777, 341.5, 398.22223, 498.02084]])
    with torch.inference_mode():
        a = pe.embed_boxes(box)
        b = pe.embed_points(box.reshape(1, 2, 2), torch.tensor([[2.0, 3.0]]), pad=False)
    assert torch.equal(a, b)
