"""``image_size`` as a model property end to end: a checkpoint trained at 128 px → ONNX export (graph and
``edgesam.image_size`` metadata at 128) → the resolver's capabilities → OnnxPredictor and TorchPredictor
at 128, whose masks agree; the runtime transforms follow the size; the automatic mask generator runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_backend.export.metadata import read_metadata
from edgesam_backend.export.onnx import export_onnx
from edgesam_backend.model.checkpoint import with_metadata
from edgesam_backend.model.edge_sam import build_edge_sam
from edgesam_backend.model.predictor import TorchPredictor
from edgesam_backend.runtime import transforms
from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.model_files import read_capabilities
from edgesam_backend.runtime.predictor import OnnxPredictor
from edgesam_backend.runtime.prompts import PromptError

SIZE = 128


def test_transforms_follow_the_size():
    img = np.zeros((60, 90, 3), np.uint8)
    x, hw = transforms.preprocess(img, SIZE)
    assert x.shape == (1, 3, SIZE, SIZE) and hw == (85, SIZE)
    assert transforms.upscale_logits(np.zeros((2, 32, 32), np.float32), hw, (60, 90)).shape == (2, 60, 90)
    assert (
        transforms.low_res_size(SIZE) == 32
        and transforms.image_size_of_embeddings(np.zeros((1, 256, 8, 8))) == SIZE
    )
    np.testing.assert_allclose(transforms.apply_coords([[90.0, 60.0]], (60, 90), SIZE), [[128.0, 85.0]])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("s128")
    torch.manual_seed(3)
    model = build_edge_sam(image_size=SIZE)
    torch.save(with_metadata(model.state_dict(), SIZE), root / "m.pth")
    export_onnx(root / "m.pth", root / "onnx")  # validates ONNX vs PyTorch at 128 on the way
    return root


def test_export_to_onnx_predictor_at_the_model_size(exported):
    enc, dec = exported / "onnx" / "encoder.onnx", exported / "onnx" / "decoder.onnx"
    assert read_metadata(enc)["edgesam.image_size"] == str(SIZE)
    assert read_capabilities(enc, dec).image_size == SIZE
    onnx_p, torch_p = OnnxPredictor(enc, dec), TorchPredictor(exported / "m.pth")
    assert onnx_p.image_size == torch_p.image_size == SIZE
    img = np.random.default_rng(0).integers(0, 255, (96, 144, 3), dtype=np.uint8)
    eo, et = onnx_p.set_image(img), torch_p.set_image(img)
    assert eo.embeddings.shape == (1, 256, 8, 8) and eo.input_hw == (85, 128) == et.input_hw
    for kw in ({"box": [20, 10, 100, 80]}, {"point_coords": [[50, 40]], "point_labels": [1]}):
        a, b = onnx_p.predict(**kw), torch_p.predict(**kw)
        assert a.low_res_logits.shape == (3, 32, 32) and a.masks.shape == (3, 96, 144)
        np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-4)
        assert (a.masks != b.masks).mean() < 1e-3
        r = onnx_p.predict(**kw, mask_input=a.low_res_logits[:1], num_multimask_outputs=1)
        assert r.masks.shape == (1, 96, 144)
    with pytest.raises(PromptError, match="32x32"):
        onnx_p.predict(box=[20, 10, 100, 80], mask_input=np.zeros((1, 256, 256), np.float32))
    anns = AutomaticMaskGenerator(onnx_p, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    masks = anns.generate(img)
    assert all(m["segmentation"].shape == (96, 144) for m in masks)


def test_export_validation_refuses_a_graph_of_other_weights(small_edgesam) -> None:
    """The export check compares onnxruntime with PyTorch: the ONNX files of one model validated
    against another model's weights fail, naming the tolerance and the logit scale it used."""
    import torch

    from edgesam_backend.export.onnx import ExportError, validate_export
    from edgesam_backend.model.edge_sam import build_edge_sam

    _, onnx = small_edgesam
    with torch.random.fork_rng():
        torch.manual_seed(1)  # small_edgesam is seed 0
        other = build_edge_sam(image_size=64).eval()
    with pytest.raises(ExportError, match=r"tolerance 0\.0001; decoder .* for logits up to"):
        validate_export(other, onnx / "encoder.onnx", onnx / "decoder.onnx")
