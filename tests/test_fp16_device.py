"""fp16 export (float16 weights, float32 IO, agreement with fp32 recorded like int8's), the torch
``device`` option, and the Ray executor's GPU / autoscaling options. GPU checks skip with "no GPU"."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from edgesam_backend.pipeline.config import RayExecutor
from edgesam_backend.pipeline.cpus import pool_size
from edgesam_backend.runtime.resolve import EngineError

torch = pytest.importorskip("torch")
HAS_CUDA = torch.cuda.is_available()


def test_torch_device_option():
    from edgesam_backend.engine import torch_device

    assert torch_device("cpu") == "cpu"
    assert torch_device("auto") == torch_device(None) == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(EngineError, match="onnxruntime provider"):
        torch_device("tensorrt")
    if not HAS_CUDA:
        with pytest.raises(EngineError, match="no CUDA GPU"):
            torch_device("cuda:0")


def test_ray_executor_gpu_and_autoscaling_options():
    ex = RayExecutor(type="ray", gpus_per_worker=0.25, min_workers=1, max_workers=4)
    assert ex.gpus_per_worker == 0.25 and pool_size(ex) == (1, 4)
    assert pool_size(RayExecutor(type="ray", num_workers=3)) == (3, 3)
    with pytest.raises(ValueError, match="both min_workers and max_workers"):
        RayExecutor(type="ray", min_workers=2)
    with pytest.raises(ValueError, match="min_workers 3 > max_workers 2"):
        RayExecutor(type="ray", min_workers=3, max_workers=2)


@pytest.mark.slow
def test_fp16_export_agrees_with_fp32(onnx_dir, tmp_path):
    from edgesam_backend.cli.engine import _synthetic_image
    from edgesam_backend.export.agreement import agreement, record_agreement
    from edgesam_backend.export.fp16 import export_fp16
    from edgesam_backend.export.metadata import read_metadata
    from edgesam_backend.runtime.predictor import OnnxPredictor

    for n in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(onnx_dir / n, tmp_path / n)
    enc16, dec16 = export_fp16(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx")
    for p in (enc16, dec16):
        m = onnx.load(str(p))
        io = [*m.graph.input, *m.graph.output]
        assert all(
            v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io if v.type.tensor_type.elem_type
        )
        halves = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
        assert halves > 0.5 * len(m.graph.initializer), (p, halves)
        assert read_metadata(p)["edgesam.precision"] == "fp16"
    image = _synthetic_image()
    fp32 = OnnxPredictor(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx")
    fp16 = OnnxPredictor(enc16, dec16)
    e32, e16 = fp32.encode(image), fp16.encode(image)
    assert e16.embeddings.dtype == np.float32 and not np.array_equal(e16.embeddings, e32.embeddings)
    agree = agreement(fp32, fp16, [image], prompts_per_image=4)
    assert agree["passes"] and agree["mean_iou"] >= 0.95, agree
    assert agree["embedding_rel_error"]["max"] < 0.01
    record_agreement(enc16, agree, variant="fp16")
    assert read_metadata(enc16)["edgesam.fp16.passes"] == "true"


@pytest.mark.skipif(not HAS_CUDA, reason="no GPU")
def test_torch_predictor_on_cuda(torch_predictor):
    from edgesam_backend.engine import load_predictor

    from .conftest import CHECKPOINT

    p = load_predictor(CHECKPOINT, backend="torch", device="cuda")
    img = np.zeros((64, 96, 3), np.uint8)
    np.testing.assert_allclose(p.encode(img).embeddings, torch_predictor.encode(img).embeddings, atol=1e-3)
