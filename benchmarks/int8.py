"""int8 encoder benchmark: speed and agreement of the static QDQ encoder against fp32.

Exports the reference checkpoint (random weights), quantizes the encoder calibrating on 8 of the
shared images, then measures

* encoder latency fp32 vs int8: interleaved runs on one session each (``--threads`` intra-op
  threads), ``--warmup`` warm-ups, median/min of ``--runs``;
* agreement: best-mask IoU for the fixed prompt set of ``export.agreement.default_prompts`` on every
  shared image (also over the images not used for calibration), and the embedding relative error.

Prints one JSON object. ``--variants`` also quantizes and scores alternative settings (other fp32
exclusions, no graph rewrites, percentile calibration, int8 activations): how the defaults were
chosen. The CPU may be shared: the JSON carries the load average around the timing, and a
single-thread timing (less sensitive to a busy second core) next to the 2-thread one.

``--device`` picks the execution providers of every session (the model resolver's device option;
the precisions compared are fixed: fp32 and int8).

    python benchmarks/int8.py [--images DIR] [--checkpoint PTH] [--runs 10] [--threads 2] [--variants]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import add_device_argument

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKPOINT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"

VARIANTS: dict[str, dict[str, Any]] = {
    "no_exclusions": {"exclude": ()},
    "fp32_fuse_and_whole_output_neck": {"exclude": ("/encoder/fuse_stage", "/encoder/neck/")},
    "no_graph_rewrites": {"rewrite": False},
    "percentile": {"method": "percentile"},
    "qint8_activations": {"activation_type": "qint8"},
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _pick_calibration(images: list[Path], count: int) -> list[Path]:
    """``count`` images spread evenly over the sorted list (deterministic)."""
    if count >= len(images):
        return list(images)
    idx = np.round(np.linspace(0, len(images) - 1, count)).astype(int)
    return [images[i] for i in sorted(set(idx.tolist()))]


def _stats(times_ms: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(times_ms), 1),
        "min": round(min(times_ms), 1),
        "max": round(max(times_ms), 1),
        "runs": len(times_ms),
    }


def time_encoders(
    paths: dict[str, Path], x: np.ndarray, threads: int, runs: int, warmup: int, device: str = "cpu"
) -> dict[str, dict[str, float]]:
    """Interleaved timing (fp32, int8, fp32, ...) so background load hits both alike."""
    from edgesam_backend.runtime.predictor import session_options
    from edgesam_backend.runtime.providers import resolve_providers

    names, options = resolve_providers(device).ort_arguments()
    sessions = {
        k: ort.InferenceSession(str(p), session_options(threads), providers=names, provider_options=options)
        for k, p in paths.items()
    }
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(warmup):
            s.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) * 1000)
    return {k: _stats(v) for k, v in times.items()}


def score(
    fp32_dir: Path,
    int8_path: Path,
    images: list[Path],
    calibration: list[Path],
    threads: int,
    device: str = "cpu",
) -> dict[str, Any]:
    from edgesam_backend.export.agreement import agreement
    from edgesam_backend.runtime.model_files import DECODER_FILE, ENCODER_FILE
    from edgesam_backend.runtime.predictor import OnnxPredictor

    dec = fp32_dir / DECODER_FILE
    p32 = OnnxPredictor(fp32_dir / ENCODER_FILE, dec, threads, device=device)
    p8 = OnnxPredictor(int8_path, dec, threads, device=device)
    res = agreement(p32, p8, images)
    calib_names = {p.name for p in calibration}
    held_out = [v for k, v in res["per_image"].items() if k not in calib_names]
    res["held_out_mean_iou"] = float(np.mean(held_out)) if held_out else None
    res["held_out_images"] = len(held_out)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    ap.add_argument("--images", type=Path, default=SHARED / "images")
    ap.add_argument("--calibration-count", type=int, default=8)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, help="keep the ONNX files here (default: a temp dir)")
    ap.add_argument("--variants", action="store_true", help="also score alternative quantization settings")
    add_device_argument(ap)
    args = ap.parse_args(argv)

    from edgesam_backend.export import agreement as agree_mod
    from edgesam_backend.export import calibration, int8
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.runtime import transforms
    from edgesam_backend.runtime.image import load_image
    from edgesam_backend.runtime.model_files import ENCODER_FILE, INT8_ENCODER_FILE

    images = calibration.list_images(args.images)
    calibration = _pick_calibration(images, args.calibration_count)
    with tempfile.TemporaryDirectory(prefix="edgesam-int8-") as tmp:
        work = args.workdir or Path(tmp)
        fp32_dir = work / "fp32"
        t0 = time.perf_counter()
        export_onnx(args.checkpoint, fp32_dir)
        t_export = time.perf_counter() - t0
        int8_path = fp32_dir / INT8_ENCODER_FILE
        t0 = time.perf_counter()
        int8.quantize_encoder(fp32_dir / ENCODER_FILE, int8_path, calibration)
        t_quant = time.perf_counter() - t0

        load_before = os.getloadavg()
        x, _ = transforms.preprocess(load_image(images[-1]))
        latency = time_encoders(
            {"fp32": fp32_dir / ENCODER_FILE, "int8": int8_path},
            x,
            args.threads,
            args.runs,
            args.warmup,
            args.device,
        )
        load_after = os.getloadavg()
        latency_1t = time_encoders(
            {"fp32": fp32_dir / ENCODER_FILE, "int8": int8_path}, x, 1, args.runs, args.warmup, args.device
        )
        agree = score(fp32_dir, int8_path, images, calibration, args.threads, args.device)

        variants: dict[str, Any] = {}
        if args.variants:
            for name, kw in VARIANTS.items():
                vpath = work / f"encoder.int8.{name}.onnx"
                int8.quantize_encoder(fp32_dir / ENCODER_FILE, vpath, calibration, **kw)
                lat = time_encoders(
                    {"fp32": fp32_dir / ENCODER_FILE, "default": int8_path, name: vpath},
                    x,
                    args.threads,
                    args.runs,
                    args.warmup,
                    args.device,
                )
                a = score(fp32_dir, vpath, images, calibration, args.threads, args.device)
                variants[name] = {
                    "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in kw.items()},
                    "latency_ms_median": {k: v["median"] for k, v in lat.items()},
                    "mean_iou": round(a["mean_iou"], 4),
                    "min_iou": round(a["min_iou"], 4),
                    "embedding_rel_error_mean": round(a["embedding_rel_error"]["mean"], 4),
                }
        sizes = {
            "fp32_mb": round((fp32_dir / ENCODER_FILE).stat().st_size / 2**20, 2),
            "int8_mb": round(int8_path.stat().st_size / 2**20, 2),
        }

    result: dict[str, Any] = {
        "benchmark": "int8 encoder (static per-channel QDQ) vs fp32",
        "weights": "random reference",
        "checkpoint": str(args.checkpoint),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "python": sys.version.split()[0],
        "threads": args.threads,
        "device": args.device,
        "settings": {
            "format": "QDQ",
            "per_channel": True,
            "method": "minmax",
            "activation_type": "quint8",
            "weight_type": "qint8",
            "op_types": list(int8.DEFAULT_OP_TYPES),
            "kept_fp32": list(int8.DEFAULT_EXCLUDE),
            "quant_pre_process": True,
            "graph_rewrites": ["erf GELU -> com.microsoft.Gelu", "spatial ReduceMean -> GlobalAveragePool"],
        },
        "calibration_images": [p.name for p in calibration],
        "seconds": {"export": round(t_export, 1), "quantize": round(t_quant, 1)},
        "model_size": sizes,
        "latency_ms": {
            **latency,
            "speedup_median": round(latency["fp32"]["median"] / latency["int8"]["median"], 2),
            "timing_input": images[-1].name,
            "one_thread": {
                "fp32": latency_1t["fp32"],
                "int8": latency_1t["int8"],
                "speedup_median": round(latency_1t["fp32"]["median"] / latency_1t["int8"]["median"], 2),
            },
            "loadavg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
        "agreement": {
            "images": agree["num_images"],
            "prompts": agree["num_prompts"],
            "prompt_set": "3x3 grid of single positive points (25/50/75%), best of 3 by stability; "
            "2 boxes, single mask",
            "mean_iou": round(agree["mean_iou"], 4),
            "min_iou": round(agree["min_iou"], 4),
            "held_out_mean_iou": round(agree["held_out_mean_iou"], 4) if agree["held_out_images"] else None,
            "held_out_images": agree["held_out_images"],
            "per_image_mean_iou": {k: round(v, 4) for k, v in agree["per_image"].items()},
        },
        "embedding_rel_error": {k: round(v, 4) for k, v in agree["embedding_rel_error"].items()},
        "threshold": agree_mod.AGREEMENT_THRESHOLD,
        "holds_threshold": bool(agree["passes"]),
        "default": "off (opt-in: load_predictor(int8=True)); random-weight agreement does not "
        "carry over to a trained model",
    }
    if variants:
        result["variants"] = variants
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
