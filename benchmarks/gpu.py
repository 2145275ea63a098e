"""GPU benchmark (JSON): encoder / decoder latency and throughput at batch 1 and 8, fp16 vs fp32
agreement, everything-mode images/s, for onnxruntime CUDA and torch CUDA.

    python benchmarks/gpu.py [--onnx-dir DIR] [--checkpoint PTH] [--images DIR] [--runs 20] [--out r.json]
           [--points-per-side 32] [--device cuda:0]

Without a GPU (no CUDAExecutionProvider in onnxruntime and no CUDA in torch) it prints
``{"benchmark": "gpu", "skipped": "no GPU ...", ...}`` and exits 0. ``--device cpu`` runs every
measurement on the CPU instead (the test suite's smoke run of this script: slow, and bf16 instead of
fp16 for torch, which has no fp16 convolutions on the CPU). Without ``--onnx-dir`` the checkpoint is
exported (fp32) to a temporary folder; the fp16 pair is always converted into a temporary folder
(``edgesam export --fp16``'s converter), never into ``--onnx-dir``.

For each runtime (``onnxruntime_cuda``: :class:`OnnxPredictor` on the CUDA execution provider, IO
binding on; ``torch_cuda``: :class:`TorchPredictor`, fp16 = ``torch.autocast``) and precision:

* ``batch1`` / ``batch8``: ``encoder_ms`` per timing and ``encoder_images_per_s`` (onnxruntime: the
  exported encoder takes one image, so batch 8 is 8 calls; torch: one call on an ``(8, 3, S, S)``
  batch), ``decoder_ms`` and ``decoder_prompts_per_s`` of ONE batched decoder call of 1 or 8 point
  prompts on a cached embedding (``points_per_batch`` 1 / 8; all four mask tokens, no upscaling);
* ``agreement_fp16_vs_fp32``: :func:`edgesam_backend.export.agreement.agreement` on the images;
* ``everything``: images/s of the grid generator (``--points-per-side``, SAM's 32 by default).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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


def _time(fn: Callable[[], Any], runs: int, sync: Callable[[], Any] | None = None) -> float:
    """Median seconds of ``runs`` calls of ``fn`` after one warm-up (``sync`` after each, e.g. CUDA)."""
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


def _prompts(size: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` one-point prompts on the model frame's diagonal: coords ``(b, 1, 2)``, labels ``(b, 1)``."""
    xy = np.linspace(0.1 * size, 0.9 * size, b, dtype=np.float32)
    return np.stack([xy, xy[::-1]], axis=1)[:, None], np.ones((b, 1), np.float32)


def bench_predictor(
    predictor: Any,
    image: np.ndarray,
    runs: int,
    encode_batch: Callable[[int], Any] | None = None,
    sync: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Encoder and decoder timings at batch 1 and 8 (see the module docs); ``encode_batch(b)`` encodes
    a real batch of ``b`` images where the runtime can (else ``b`` sequential :meth:`encode` calls)."""
    emb = predictor.encode(image)
    out: dict[str, Any] = {}
    for b in (1, 8):
        if encode_batch is not None:
            enc: Callable[[], Any] = lambda b=b: encode_batch(b)  # noqa: E731
        else:
            enc = lambda b=b: [predictor.encode(image) for _ in range(b)]  # noqa: E731
        coords, labels = _prompts(emb.image_size, b)
        t_enc = _time(enc, runs, sync)
        t_dec = _time(
            lambda c=coords, lab=labels: predictor.predict_low_res(c, lab, embedding=emb), runs, sync
        )
        out[f"batch{b}"] = {
            "encoder_ms": round(t_enc * 1e3, 3),
            "encoder_images_per_s": round(b / t_enc, 2),
            "decoder_ms": round(t_dec * 1e3, 3),
            "decoder_prompts_per_s": round(b / t_dec, 2),
        }
    return out


def bench_everything(predictor: Any, images: list[np.ndarray], points_per_side: int) -> dict[str, Any]:
    """Images/s of the grid generator (one warm-up image first)."""
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator

    gen = AutomaticMaskGenerator(predictor, points_per_side=points_per_side)
    gen.generate(images[0])
    t = time.perf_counter()
    n = sum(len(gen.generate(im)) for im in images)
    dt = time.perf_counter() - t
    return {"images": len(images), "masks": n, "images_per_s": round(len(images) / dt, 3)}


def onnx_report(
    enc: Path, dec: Path, fp16_dir: Path, images: list[np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    """onnxruntime on ``args.device``: fp32 and fp16 timings, their agreement, everything mode."""
    from edgesam_backend.export.agreement import agreement
    from edgesam_backend.export.fp16 import FP16_DECODER_FILE, FP16_ENCODER_FILE, convert_fp16
    from edgesam_backend.runtime.predictor import OnnxPredictor

    enc16 = convert_fp16(enc, fp16_dir / FP16_ENCODER_FILE)
    dec16 = convert_fp16(dec, fp16_dir / FP16_DECODER_FILE)
    p32 = OnnxPredictor(enc, dec, device=args.device)
    p16 = OnnxPredictor(enc16, dec16, device=args.device)
    return {
        "providers": p32.providers,
        "io_binding": p32.io_binding,
        "fp32": bench_predictor(p32, images[0], args.runs),
        "fp16": bench_predictor(p16, images[0], args.runs),
        "agreement_fp16_vs_fp32": agreement(p32, p16, images),
        "everything_fp32": bench_everything(p32, images[:2], args.points_per_side),
        "everything_fp16": bench_everything(p16, images[:2], args.points_per_side),
    }


def torch_report(checkpoint: Path, images: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """torch on ``args.device``: fp32 and autocast (fp16 on CUDA, bf16 on the CPU) timings with a real
    encoder batch, their agreement, everything mode."""
    import torch

    from edgesam_backend.export.agreement import agreement
    from edgesam_backend.model.predictor import TorchPredictor
    from edgesam_backend.runtime import transforms

    dev = torch.device(args.device)
    half = torch.float16 if dev.type == "cuda" else torch.bfloat16
    sync = torch.cuda.synchronize if dev.type == "cuda" else None

    class AutocastPredictor(TorchPredictor):
        """:class:`TorchPredictor` under ``torch.autocast(half)``; outputs back to float32."""

        def _encode_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.autocast(dev.type, dtype=half):
                out = super()._encode_outputs(x)
            return {k: np.asarray(v, np.float32) for k, v in out.items()}

        def _decode(self, *a: Any) -> Any:
            with torch.autocast(dev.type, dtype=half):
                return tuple(np.asarray(v, np.float32) for v in super()._decode(*a))

    p32 = TorchPredictor(checkpoint, device=dev)
    p16 = AutocastPredictor(checkpoint, device=dev)
    size = p32.image_size
    x, _ = transforms.preprocess(images[0], size)  # (1, 3, S, S) float32, the encoder's input

    def batch_of(p: TorchPredictor, auto: bool) -> Callable[[int], Any]:
        @torch.inference_mode()
        def run(b: int) -> Any:
            t = torch.from_numpy(np.repeat(x, b, axis=0)).to(dev)
            with torch.autocast(dev.type, dtype=half, enabled=auto):
                return p.model.image_encoder(t)

        return run

    return {
        "autocast_dtype": str(half).removeprefix("torch."),
        "fp32": bench_predictor(p32, images[0], args.runs, batch_of(p32, False), sync),
        "fp16": bench_predictor(p16, images[0], args.runs, batch_of(p16, True), sync),
        "agreement_fp16_vs_fp32": agreement(p32, p16, images),
        "everything_fp32": bench_everything(p32, images[:2], args.points_per_side),
        "everything_fp16": bench_everything(p16, images[:2], args.points_per_side),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx-dir", type=Path, help="fp32 encoder.onnx + decoder.onnx (default: export)")
    ap.add_argument(
        "--checkpoint", type=Path, default=SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
    )
    ap.add_argument("--images", type=Path, default=SHARED / "images")
    ap.add_argument("--num-images", type=int, default=4)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--device", default="cuda", help="cuda[:N] (default), or cpu for a smoke run")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    status = gpu_status()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "device": args.device,
        "machine": {"python": platform.python_version(), **status},
    }
    on_cpu = args.device == "cpu"
    run_onnx = on_cpu or status["onnxruntime_cuda"]
    run_torch = on_cpu or status["torch_cuda"]
    if not (run_onnx or run_torch):
        result["skipped"] = "no GPU (no CUDAExecutionProvider in onnxruntime, no CUDA in torch)"
    else:
        from edgesam_backend.runtime.image import load_image

        paths = sorted(p for p in args.images.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        images = [load_image(p) for p in paths[: args.num_images]]
        with tempfile.TemporaryDirectory(prefix="edgesam-gpu-") as td:
            onnx = args.onnx_dir
            if onnx is None:
                from edgesam_backend.export.onnx import export_onnx

                onnx = Path(td) / "fp32"
                export_onnx(args.checkpoint, onnx)
            if run_onnx:
                (Path(td) / "fp16").mkdir()
                result["onnxruntime"] = onnx_report(
                    onnx / "encoder.onnx", onnx / "decoder.onnx", Path(td) / "fp16", images, args
                )
            if run_torch:
                result["torch"] = torch_report(args.checkpoint, images, args)
    emit_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
