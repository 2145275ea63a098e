"""GPU benchmark (JSON): encoder / decoder latency and throughput at batch 1 and 8, fp16 vs fp32
agreement, everything-mode images/s, for onnxruntime CUDA and torch CUDA.

    python benchmarks/gpu.py [--onnx-dir DIR] [--checkpoint PTH] [--images DIR] [--runs 20] [--out r.json]

Without a GPU (no CUDAExecutionProvider in onnxruntime and no CUDA in torch) it prints
``{"benchmark": "gpu", "skipped": "no GPU", ...}`` and exits 0. Without ``--onnx-dir`` the reference
checkpoint in ../shared is exported (fp32, then fp16 via ``edgesam export --fp16``'s converter).

* ``encoder``/``decoder``: median ms per call and items/s at batch 1 and 8 (decoder: 8 prompts of one
  image per call, i.e. ``points_per_batch`` 8; encoder batch 8: 8 sequential images per timing, the
  exported encoder takes one image);
* ``agreement``: :func:`edgesam_backend.export.agreement.agreement` of fp16 vs fp32 on CUDA;
* ``everything``: images/s of the grid generator (32x32 points) on CUDA.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit_result

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def gpu_status() -> dict[str, Any]:
    """Which CUDA runtimes this machine offers."""
    import onnxruntime as ort

    out: dict[str, Any] = {"onnxruntime_cuda": "CUDAExecutionProvider" in ort.get_available_providers()}
    try:
        import torch

        out["torch_cuda"] = bool(torch.cuda.is_available())
        if out["torch_cuda"]:
            out["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        out["torch_cuda"] = False
    return out


def _time(fn: Any, runs: int, sync: Any = None) -> float:
    fn()
    if sync:
        sync()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_onnx(enc: Path, dec: Path, image: np.ndarray, runs: int) -> dict[str, Any]:
    from edgesam_backend.runtime.predictor import OnnxPredictor

    p = OnnxPredictor(enc, dec, device="cuda")
    emb = p.encode(image)
    h, w = image.shape[:2]
    pts = np.stack([np.linspace(0.1 * w, 0.9 * w, 8), np.linspace(0.1 * h, 0.9 * h, 8)], axis=1)
    out: dict[str, Any] = {}
    for b in (1, 8):
        t_enc = _time(lambda b=b: [p.encode(image) for _ in range(b)], runs)
        t_dec = _time(
            lambda b=b: [p.predict(pts[i : i + 1], np.ones(1), embedding=emb) for i in range(b)], runs
        )
        out[f"batch{b}"] = {
            "encoder_ms": round(t_enc * 1e3, 3),
            "encoder_images_per_s": round(b / t_enc, 2),
            "decoder_ms": round(t_dec * 1e3, 3),
            "decoder_prompts_per_s": round(b / t_dec, 2),
        }
    return out


def bench_torch(checkpoint: Path, image: np.ndarray, runs: int) -> dict[str, Any]:
    import torch

    from edgesam_backend.model.predictor import TorchPredictor

    p = TorchPredictor(checkpoint, device="cuda")
    out: dict[str, Any] = {}
    for b in (1, 8):
        t = _time(lambda b=b: [p.encode(image) for _ in range(b)], runs, torch.cuda.synchronize)
        out[f"batch{b}"] = {"encoder_ms": round(t * 1e3, 3), "encoder_images_per_s": round(b / t, 2)}
    return out


def bench_everything(enc: Path, dec: Path, images: list[np.ndarray]) -> dict[str, Any]:
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.predictor import OnnxPredictor

    gen = AutomaticMaskGenerator(OnnxPredictor(enc, dec, device="cuda"), points_per_side=32)
    gen.generate(images[0])
    t = time.perf_counter()
    n = sum(len(gen.generate(im)) for im in images)
    dt = time.perf_counter() - t
    return {"images": len(images), "masks": n, "images_per_s": round(len(images) / dt, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx-dir", type=Path)
    ap.add_argument(
        "--checkpoint", type=Path, default=SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
    )
    ap.add_argument("--images", type=Path, default=SHARED / "images")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    status = gpu_status()
    result: dict[str, Any] = {"benchmark": "gpu", "machine": {"python": platform.python_version(), **status}}
    if not (status["onnxruntime_cuda"] or status["torch_cuda"]):
        result["skipped"] = "no GPU (no CUDAExecutionProvider in onnxruntime, no CUDA in torch)"
    else:
        from edgesam_backend.export.agreement import agreement
        from edgesam_backend.export.fp16 import export_fp16
        from edgesam_backend.runtime.image import load_image
        from edgesam_backend.runtime.predictor import OnnxPredictor

        paths = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:4]
        images = [load_image(p) for p in paths]
        with tempfile.TemporaryDirectory(prefix="edgesam-gpu-") as td:
            onnx = args.onnx_dir
            if onnx is None:
                from edgesam_backend.export.onnx import export_onnx

                onnx = Path(td)
                export_onnx(args.checkpoint, onnx)
            enc, dec = onnx / "encoder.onnx", onnx / "decoder.onnx"
            enc16, dec16 = export_fp16(enc, dec)
            if status["onnxruntime_cuda"]:
                result["onnxruntime_cuda"] = {
                    "fp32": bench_onnx(enc, dec, images[0], args.runs),
                    "fp16": bench_onnx(enc16, dec16, images[0], args.runs),
                    "agreement_fp16_vs_fp32": agreement(
                        OnnxPredictor(enc, dec, device="cuda"),
                        OnnxPredictor(enc16, dec16, device="cuda"),
                        images,
                    ),
                    "everything_fp32": bench_everything(enc, dec, images[:2]),
                    "everything_fp16": bench_everything(enc16, dec16, images[:2]),
                }
            if status["torch_cuda"]:
                result["torch_cuda"] = bench_torch(args.checkpoint, images[0], args.runs)
    emit_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
