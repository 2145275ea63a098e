"""Engine latency benchmark: prints one JSON object.

Encoder: PyTorch eager (the model as trained: bicubic, BN unfused) vs onnxruntime fp32 of our export
(bicubic as conv, BN folded) on the same weights, interleaved, median of N after warm-up, 2 threads.
Decoder: 1 point / box / 5 points with a cached embedding (onnxruntime decoder call, and the full
``predict`` incl. upscaling one mask to the original size), plus PyTorch for reference. Peak RSS.

``--device`` / ``--precision`` go to the model resolver for the onnxruntime side (fp16 files are
converted next to the export when asked for; the ``ort_fp32_*`` keys then time that precision, named in
``ort_precision``); PyTorch stays on the CPU.

Usage: python benchmarks/engine.py [--checkpoint PATH] [--runs 15] [--threads 2] [--device cpu]
    [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_model_arguments, ensure_precision_files

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_CKPT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"


def median_ms(fn, runs: int, warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": round(statistics.median(ts), 2),
        "min_ms": round(min(ts), 2),
        "max_ms": round(max(ts), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    add_model_arguments(ap, precisions=("auto", "fp32", "fp16"))  # no int8 encoder in a fresh export
    args = ap.parse_args()

    import torch

    from edgesam_backend.engine import load_predictor
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.model.checkpoint import load_edge_sam
    from edgesam_backend.model.predictor import TorchPredictor
    from edgesam_backend.runtime.image import load_image

    torch.set_num_threads(args.threads)
    model = load_edge_sam(args.checkpoint)
    tmp = Path(tempfile.mkdtemp(prefix="edgesam-bench-"))
    export_onnx(args.checkpoint, tmp)
    ensure_precision_files(tmp, args.precision)
    ort_pred = load_predictor(
        onnx_dir=tmp, threads=args.threads, device=args.device, precision=args.precision
    )
    torch_pred = TorchPredictor(model)

    image = load_image(SHARED / "images" / "truck.jpg")
    from edgesam_backend.runtime.transforms import preprocess

    x, _ = preprocess(image)
    xt = torch.from_numpy(x)

    def torch_enc() -> None:
        with torch.inference_mode():
            model.image_encoder(xt)

    def ort_enc() -> None:
        ort_pred._encode_tensor(x)

    # interleave to share thermal/noise conditions
    for f in (torch_enc, ort_enc):
        f()
        f()
    t_times, o_times = [], []
    for _ in range(args.runs):
        for f, acc in ((torch_enc, t_times), (ort_enc, o_times)):
            t = time.perf_counter()
            f()
            acc.append((time.perf_counter() - t) * 1000)
    enc = {
        "torch_eager_bicubic_ms": round(statistics.median(t_times), 2),
        "ort_fp32_bicubic_ms": round(statistics.median(o_times), 2),
    }
    enc["ort_over_torch"] = round(enc["ort_fp32_bicubic_ms"] / enc["torch_eager_bicubic_ms"], 3)
    official = SHARED / "reference" / "edgesam" / "official_format_encoder.onnx"
    if official.is_file():
        import onnxruntime as ort

        from edgesam_backend.runtime.predictor import session_options

        names, options = ort_pred.execution.ort_arguments()
        s = ort.InferenceSession(
            str(official), session_options(args.threads), providers=names, provider_options=options
        )
        enc["ort_official_export_bilinear_ms"] = median_ms(lambda: s.run(None, {"image": x}), args.runs)[
            "median_ms"
        ]

    emb = ort_pred.encode(image)
    prompts = {
        "1_point": {"point_coords": [[500, 375]], "point_labels": [1]},
        "box": {"box": [425, 600, 700, 875]},
        "5_points": {
            "point_coords": [[500, 375], [1125, 625], [575, 750], [900, 500], [300, 300]],
            "point_labels": [1, 1, 0, 1, 0],
        },
    }
    from edgesam_backend.runtime.prompts import pack_prompt

    dec = {}
    for name, p in prompts.items():
        c, lab = pack_prompt(p.get("point_coords"), p.get("point_labels"), p.get("box"), emb.original_hw)
        dec[name] = {
            "ort_decoder": median_ms(
                lambda c=c, lab=lab: ort_pred.predict_low_res(c, lab, embedding=emb), 3 * args.runs
            ),
            "ort_predict_1_mask_upscaled": median_ms(
                lambda p=p: ort_pred.predict(**p, num_multimask_outputs=1, embedding=emb), 3 * args.runs
            ),
            "torch_decoder": median_ms(
                lambda c=c, lab=lab: torch_pred.predict_low_res(c, lab, embedding=emb), args.runs
            ),
        }
    import onnxruntime

    out = {
        "benchmark": "engine",
        "weights": str(args.checkpoint.name),
        "image": "truck.jpg 1800x1200",
        "threads": args.threads,
        "runs": args.runs,
        "device": ort_pred.execution.chosen,
        "providers": ort_pred.providers,
        "ort_precision": ort_pred.precision,
        "encoder": enc,
        "decoder_cached_embedding": dec,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "cpu": platform.processor() or platform.machine(),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
