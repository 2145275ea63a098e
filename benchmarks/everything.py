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
       [--boxes 100] [--worst-case-images 1]
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


def placeholder_boxes(records: list[dict], hw: tuple[int, int], k: int, seed: int) -> tuple[np.ndarray, int]:
    """K XYXY boxes: up to K grid-mask boxes (evenly sampled), then seeded random boxes."""
    h, w = hw
    from_masks = [[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in records)]
    if len(from_masks) > k:
        from_masks = [from_masks[i] for i in np.linspace(0, len(from_masks) - 1, k).astype(int)]
    rng = np.random.default_rng(seed)
    n = k - len(from_masks)
    side = min(h, w) * np.exp(rng.uniform(np.log(0.05), np.log(0.6), (n, 2)))
    centre = rng.uniform([0, 0], [w, h], (n, 2))
    rand = np.concatenate([centre - side / 2, centre + side / 2], axis=1)
    rand = np.clip(rand, 0, [w - 1, h - 1, w - 1, h - 1])
    boxes = np.concatenate([np.asarray(from_masks, np.float64).reshape(-1, 4), rand], axis=0)
    return boxes, len(from_masks)


def summarise(rows: list[dict]) -> dict:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--onnx-dir", type=Path, default=None, help="reuse an export (else export to a tmp dir)")
    ap.add_argument("--images", type=int, default=18, help="the first N images (numeric order, truck last)")
    ap.add_argument("--names", nargs="*", default=None, help="explicit image file names instead")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--worst-case-images", type=int, default=1)
    args = ap.parse_args()
    t_start = time.perf_counter()

    import cv2

    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.image import load_image
    from edgesam_backend.runtime.predictor import OnnxPredictor

    cv2.setNumThreads(args.threads)
    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        from edgesam_backend.model.export import export_onnx

        onnx_dir = Path(tempfile.mkdtemp(prefix="edgesam-everything-"))
        export_onnx(args.checkpoint, onnx_dir)
    pred = OnnxPredictor(
        onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx", intra_op_num_threads=args.threads
    )

    paths = [IMAGES / n for n in args.names] if args.names else list_images()[: args.images]
    grid = AutomaticMaskGenerator(pred)  # defaults: 32x32, 64 per batch, stability >= 0.95
    boxes_gen = AutomaticMaskGenerator(pred)
    worst = AutomaticMaskGenerator(pred, stability_score_thresh=0.0)

    # warm-up (not timed): one encode and one full decoder batch
    first = load_image(paths[0])
    emb = pred.encode(first)
    pts = np.zeros((64, 2, 2), np.float32)
    pred.predict_low_res(pts, np.tile(np.array([1.0, -1.0], np.float32), (64, 1)), embedding=emb)

    grid_rows, box_rows, worst_rows = [], [], []
    from_mask_boxes = 0
    for i, path in enumerate(paths):
        image = load_image(path)
        hw = (int(image.shape[0]), int(image.shape[1]))
        records, st = grid.generate(image, return_stats=True)
        grid_rows.append(row(path.name, hw, st))
        boxes, n_from_masks = placeholder_boxes(records, hw, args.boxes, seed=i)
        from_mask_boxes += n_from_masks
        _, st = boxes_gen.generate_from_boxes(image, boxes, return_stats=True)
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
        "boxes": {
            "placeholder": True,
            "prompts": f"K={args.boxes} per image: {from_mask_boxes} boxes of grid masks in total + seeded "
            "random boxes (PLACEHOLDER until region proposals are wired)",
            "settings": "generate_from_boxes, points_per_batch=64, token 0, stability_score_thresh=0.95",
            "includes_encoder": True,
            **summarise(box_rows),
            "per_image": box_rows,
        },
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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
