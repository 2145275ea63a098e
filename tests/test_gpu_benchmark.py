"""benchmarks/gpu.py: the no-GPU skip, and its whole measurement code on the CPU (``--device cpu``:
onnxruntime fp32/fp16, torch fp32/bf16 autocast) so the GPU run does not first meet its bugs on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


def _run(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_gpu_benchmark_says_it_was_skipped_without_a_gpu() -> None:
    import onnxruntime as ort

    torch = pytest.importorskip("torch")
    if "CUDAExecutionProvider" in ort.get_available_providers() or torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would run instead of saying it was skipped")
    r = _run()
    assert r["skipped"].startswith("no GPU") and "onnxruntime" not in r and "torch" not in r


@pytest.mark.slow
def test_gpu_benchmark_measures_everything_on_the_cpu(small_edgesam, tmp_path: Path) -> None:
    ckpt, onnx = small_edgesam
    r = _run(
        "--device",
        "cpu",
        "--checkpoint",
        str(ckpt),
        "--onnx-dir",
        str(onnx),
        "--runs",
        "1",
        "--num-images",
        "2",
        "--points-per-side",
        "4",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert json.loads((tmp_path / "r.json").read_text()) == r
    assert "skipped" not in r
    for runtime in ("onnxruntime", "torch"):
        rep = r[runtime]
        for prec in ("fp32", "fp16"):
            for b in ("batch1", "batch8"):
                assert rep[prec][b]["encoder_ms"] > 0 and rep[prec][b]["decoder_prompts_per_s"] > 0
            assert rep[f"everything_{prec}"]["images"] == 2
        assert 0.0 <= rep["agreement_fp16_vs_fp32"]["mean_iou"] <= 1.0
    assert r["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert r["torch"]["autocast_dtype"] == "bfloat16"
    # the fp16 pair went to a temporary folder, not next to the user's files
    assert not any(p.name.endswith(".fp16.onnx") for p in onnx.iterdir())
