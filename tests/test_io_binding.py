"""IO binding: the embedding stays on the execution device between decoder calls (CUDA / TensorRT by
default). The same code path is forced on the CPU here, where it must give identical outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgesam_backend.runtime.image import load_image
from edgesam_backend.runtime.predictor import OnnxPredictor

from .conftest import IMAGES


def test_bound_embedding_gives_identical_decodes_and_is_copied_once(onnx_dir: Path, onnx_predictor) -> None:
    bound = OnnxPredictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx", io_binding=True)
    assert bound.io_binding and not onnx_predictor.io_binding  # off on the CPU by default
    emb = onnx_predictor.encode(load_image(IMAGES / "1.jpeg"))
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 400, size=(5, 2, 2))
    labels = np.ones((5, 2), np.int64)
    for select in ("stability", "all"):
        a = onnx_predictor.decode(*_model_frame(onnx_predictor, pts, labels, emb), None, emb, select=select)
        b = bound.decode(*_model_frame(bound, pts, labels, emb), None, emb, select=select)
        np.testing.assert_array_equal(a.low_res_logits, b.low_res_logits)
        np.testing.assert_array_equal(a.iou_predictions, b.iou_predictions)
    first = bound._bound[1]
    bound.decode(*_model_frame(bound, pts[:1], labels[:1], emb), None, emb)
    assert bound._bound[1] is first  # the same device copy for every call on this embedding
    other = onnx_predictor.encode(load_image(IMAGES / "2.jpeg"))
    bound.decode(*_model_frame(bound, pts[:1], labels[:1], other), None, other)
    assert bound._bound[1] is not first


def _model_frame(
    pred: OnnxPredictor, pts: np.ndarray, labels: np.ndarray, emb
) -> tuple[np.ndarray, np.ndarray]:
    from edgesam_backend.runtime import transforms

    coords = transforms.apply_coords(pts, emb.original_hw, pred.image_size).astype(np.float32)
    return coords, labels.astype(np.float32)


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(), reason="no GPU (CUDA provider)"
)
def test_cuda_io_binding_matches_cpu(onnx_dir: Path, onnx_predictor) -> None:
    gpu = OnnxPredictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx", device="cuda")
    assert gpu.io_binding
    emb = onnx_predictor.encode(load_image(IMAGES / "1.jpeg"))
    pts = np.array([[[200.0, 150.0]]])
    labels = np.ones((1, 1), np.int64)
    a = onnx_predictor.decode(*_model_frame(onnx_predictor, pts, labels, emb), None, emb)
    b = gpu.decode(*_model_frame(gpu, pts, labels, emb), None, emb)
    np.testing.assert_allclose(a.low_res_logits, b.low_res_logits, atol=1e-3)
