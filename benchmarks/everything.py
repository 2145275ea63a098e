"""Everything-mode benchmark: prints one JSON object.

Per image on the shared photos (random reference weights, onnxruntime fp32 of our export, 2 intra-op
threads): time, encoder vs decoder vs post-processing split, decoder calls and prompts of

* ``grid``: :class:`AutomaticMaskGenerator` with its defaults (32x32 points, 64 per decoder call,
  stability >= 0.95, box NMS 0.7, one crop);
* ``grid_all_survive`` (first ``--worst-case-images`` images): the same grid with the quality filter
  off, so all 3072 candidate masks are upscaled, encoded and NMS-ed — the post-processing upper bound
  (random weights pass almost nothing through the default filter);
* ``boxes``: :meth:`generate_from_boxes` with K boxes per image. PLACEHOLDER prompts until the region
  proposal module is wired: the grid run's mask boxes (evenly sampled), topped up with seeded random
  boxes (centres uniform, sides 5-60 % of the image side).

Usage: python benchmarks/everything.py [--images N | --names 1.jpeg truck.jpg] [--threads 2] [--onnx-dir DIR]
       [--boxes 100] [--worst-case-images 1] [--decoder-repeats 3]

The decoder export is the reassociated (fast) one; ``decoder_per_prompt`` is benchmarks/decoder.py run
in a child (plain vs fast decoder per prompt at B = 1/16/64, floor, peak RSS).
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_CKPT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
IMAGES = SHARED / "images"


def list_images() -> list[Path]:
    files = [p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")]
    # the 16 web-demo photos in numeric order, then groceries and truck
    return sorted(files, key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))


def summarise(rows: list[dict]) -> dict:
    if not rows:
        return {}
    keys = ("total_s", "encoder_s", "decoder_s", "postprocess_s", "upscale_s")
    out = {f"median_{k}": round(statistics.median(r[k] for r in rows), 3) for k in keys}
    out["mean_total_s"] = round(statistics.fmean(r["total_s"] for r in rows), 3)
    out["decoder_calls_per_image"] = sorted({r["decoder_calls"] for r in rows})
    out["prompts_per_image"] = sorted({r["prompts"] for r in rows})
    out["median_decoder_ms_per_call"] = round(
        statistics.median(1000 * r["decoder_s"] / max(r["decoder_calls"], 1) for r in rows), 1
    )
    out["median_masks"] = statistics.median(r["masks"] for r in rows)
    return out


def row(name: str, hw: tuple[int, int], st: dict) -> dict:
    keep = (
        "decoder_calls", "prompts", "candidates", "after_quality_filter", "after_edge_filter",
        "after_box_nms", "masks",
    )  # fmt: skip
    r = {"image": name, "hw": list(hw), **{k: st[k] for k in keep}}
    for k in ("total_s", "encoder_s", "decoder_s", "postprocess_s", "upscale_s"):
        r[k] = round(st[k], 3)
    return r


def _decoder_bench(args: argparse.Namespace) -> dict:
    """benchmarks/decoder.py in a child process: the plain vs the fast (default) decoder export."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).with_name("decoder.py")), "--checkpoint", str(args.checkpoint)]
    cmd += ["--threads", str(args.threads), "--repeats", str(args.decoder_repeats)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--onnx-dir", type=Path, default=None, help="reuse an export (else export to a tmp dir)")
    ap.add_argument("--images", type=int, default=18, help="the first N images (numeric order, truck last)")
    ap.add_argument("--names", nargs="*", default=None, help="explicit image file names instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boxes", type=int, default=100, help="K: proposals used as box prompts")
    ap.add_argument(
        "--rpn-checkpoint",
        type=Path,
        default=None,
        help="EdgeSAM checkpoint with rpn_head.* weights (default: --checkpoint plus an untrained head "
        "whose objectness bias is raised so that it proposes boxes; timing does not depend on quality)",
    )
    ap.add_argument("--worst-case-images", type=int, default=1)
    ap.add_argument(
        "--decoder-repeats",
        type=int,
        default=3,
        help="repeats of benchmarks/decoder.py (plain vs fast decoder per prompt at B=1/16/64); 0 skips it",
    )
    args = ap.parse_args()
    t_start = time.perf_counter()

    import cv2

    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.image import load_image

    cv2.setNumThreads(args.threads)
    import torch

    from edgesam_backend.engine import load_predictor
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.model.checkpoint import load_edge_sam

    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        onnx_dir = Path(tempfile.mkdtemp(prefix="edgesam-everything-"))
        export_onnx(args.checkpoint, onnx_dir)
    pred = load_predictor(onnx_dir=onnx_dir, threads=args.threads)
    rpn_model = load_edge_sam(args.rpn_checkpoint or args.checkpoint, with_rpn=True)
    if args.rpn_checkpoint is None:
        with torch.no_grad():
            rpn_model.rpn_head.cls.bias.fill_(2.0)
    rpn_dir = Path(tempfile.mkdtemp(prefix="edgesam-everything-rpn-"))
    export_onnx(rpn_model, rpn_dir)
    rpn_pred = load_predictor(onnx_dir=rpn_dir, threads=args.threads)

    paths = [IMAGES / n for n in args.names] if args.names else list_images()[: args.images]
    grid = AutomaticMaskGenerator(pred)  # defaults: 32x32, 64 per batch, stability >= 0.95
    boxes_gen = AutomaticMaskGenerator(rpn_pred)
    worst = AutomaticMaskGenerator(pred, stability_score_thresh=0.0)

    # warm-up (not timed): one encode and one full decoder batch
    first = load_image(paths[0])
    emb = pred.encode(first)
    rpn_pred.encode(first)
    pts = np.zeros((64, 2, 2), np.float32)
    pred.predict_low_res(pts, np.tile(np.array([1.0, -1.0], np.float32), (64, 1)), embedding=emb)

    # the region proposal module's share of the encoder (same weights, exported with and without it)
    from edgesam_backend.runtime.transforms import preprocess

    x, _ = preprocess(first)
    enc_ms, rpn_enc_ms = [], []
    for _ in range(7):
        t = time.perf_counter()
        pred._encode_outputs(x)
        enc_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        rpn_pred._encode_outputs(x)
        rpn_enc_ms.append((time.perf_counter() - t) * 1000)
    enc_med, rpn_med = float(np.median(enc_ms)), float(np.median(rpn_enc_ms))

    grid_rows, box_rows, worst_rows = [], [], []
    for i, path in enumerate(paths):
        image = load_image(path)
        hw = (int(image.shape[0]), int(image.shape[1]))
        _, st = grid.generate(image, return_stats=True)
        grid_rows.append(row(path.name, hw, st))
        _, st = boxes_gen.generate_from_proposals(image, top_k=args.boxes, return_stats=True)
        box_rows.append(row(path.name, hw, st))
        if i < args.worst_case_images:
            _, st = worst.generate(image, return_stats=True)
            worst_rows.append(row(path.name, hw, st))
        print(
            f"{path.name}: grid {grid_rows[-1]['total_s']} s, boxes {box_rows[-1]['total_s']} s",
            file=sys.stderr,
        )

    import onnxruntime

    out = {
        "benchmark": "everything",
        "weights": args.checkpoint.name + " (random reference weights: masks are not meaningful)",
        "backend": "onnxruntime fp32 (edgesam export)",
        "threads": args.threads,
        "images": len(paths),
        "grid": {
            "settings": "points_per_side=32, points_per_batch=64, multimask=3, stability_score_thresh=0.95, "
            "quality_score=stability, box_nms_thresh=0.7, crop_n_layers=0",
            **summarise(grid_rows),
            "per_image": grid_rows,
        },
        "grid_all_survive": {
            "settings": "as grid but stability_score_thresh=0 (every candidate upscaled, encoded, NMS-ed)",
            **summarise(worst_rows),
            "per_image": worst_rows,
        },
        "proposals": {
            "prompts": f"top-{args.boxes} region proposals after NMS 0.7 as box prompts",
            "rpn_weights": str(args.rpn_checkpoint)
            if args.rpn_checkpoint
            else "untrained head (bias raised)",
            "settings": "generate_from_proposals, points_per_batch=64, token 0, stability_score_thresh=0.95",
            "includes_encoder": True,
            **summarise(box_rows),
            "per_image": box_rows,
        },
        "speedup_proposals_vs_grid": round(
            summarise(grid_rows)["median_total_s"] / max(summarise(box_rows)["median_total_s"], 1e-9), 2
        ),
        "prompt_ratio_grid_over_proposals": round(
            float(np.median([r["prompts"] for r in grid_rows]))
            / max(1.0, float(np.median([r["prompts"] for r in box_rows]))),
            2,
        ),
        "encoder_ms": {
            "without_rpn": round(enc_med, 1),
            "with_rpn": round(rpn_med, 1),
            "rpn_share": round((rpn_med - enc_med) / enc_med, 3),
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "decoder_per_prompt": _decoder_bench(args) if args.decoder_repeats > 0 else None,
        "versions": {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
            "opencv": cv2.__version__,
        },
        "cpu": platform.processor() or platform.machine(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
