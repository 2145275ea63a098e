"""Everything-mode benchmark: today's 32x32 grid vs the new default, same images, one JSON object.

Runs, each in its own child process (so its peak resident memory, ``VmHWM``, is that run's process
tree peak: the child starts no processes of its own, and no torch is imported there):

* ``old_grid``: the plain decoder export, :class:`AutomaticMaskGenerator` with SAM's grid (32x32
  points, ``points_per_batch=64`` in one onnxruntime run: ``max_decode_batch=None``) — what the
  pipeline did before;
* ``new_default``: the fast (reassociated) decoder export, ``strategy="coverage"`` with the quickstart
  pipeline's settings (32-point grid in 3 nested levels, ``max_prompts``), ``points_per_batch=64``
  split into runs of 8 inside the predictor (bounded memory);
* ``curve``: the new mode at several prompt budgets on the same embeddings (prompts vs recall).

Per image: time (encoder included), prompts, decoder calls, masks. Quality: **grid-mask recall** —
the share of the old grid's masks that a new mask matches at IoU >= 0.8 (greedy one-to-one by IoU);
with ``--coco DIR`` (``DIR/images`` + ``DIR/annotations.json``, e.g. the quality benchmark's held-out
synthetic set) also **ground-truth recall@0.5** of both. Masks are only meaningful with trained
weights (``--checkpoint``); with the random reference weights the numbers measure cost only.
``oracle_sampling`` (no model, ``--oracle N`` synthetic images): a decoder that answers each point with
the ground-truth region under it — where the prompts go, grid vs coverage at each budget.
``decoder_per_prompt`` is benchmarks/decoder.py (plain vs fast decoder at B = 1/16/64, its floor).

``--device`` / ``--precision`` go to the model resolver of each run (fp16 pairs are converted next to
the exports when asked for).

Usage: python benchmarks/everything.py [--checkpoint PTH] [--images 2 | --coco DIR] [--threads 2]
       [--points-per-side 32] [--onnx-dir DIR] [--max-prompts 320] [--curve 64 128 256] [--decoder-repeats 3]
       [--device cpu] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_model_arguments, ensure_precision_files

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_CKPT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
IMAGES = SHARED / "images"
MATCH_IOU = 0.8
GT_IOU = 0.5


def list_images() -> list[Path]:
    files = [p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")]
    # the 16 web-demo photos in numeric order, then groceries and truck
    return sorted(files, key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))


def peak_rss_mb() -> float:
    """This process's peak resident set (``VmHWM``; ``ru_maxrss`` would include a forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return round(int(line.split()[1]) / 1024, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- child: one configuration ------------------------------------------------------------------------


def child(cfg: dict[str, Any]) -> None:
    """Run one configuration on the images; write RLEs + stats to ``cfg["out"]``, print the summary."""
    import cv2

    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.image import load_image
    from edgesam_backend.runtime.predictor import OnnxPredictor
    from edgesam_backend.runtime.resolve import resolve_model

    cv2.setNumThreads(cfg["threads"])
    model = resolve_model(onnx_dir=cfg["onnx_dir"], device=cfg["device"], precision=cfg["precision"])
    pred = OnnxPredictor(
        model.encoder,
        model.decoder,
        intra_op_num_threads=cfg["threads"],
        device=model.execution,
        capabilities=model.capabilities,
        max_decode_batch=cfg["max_decode_batch"],
    )
    kw = dict(cfg["generator"], output_mode="coco_rle")
    first = load_image(cfg["images"][0])
    AutomaticMaskGenerator(pred, **dict(kw, max_prompts=8)).generate(first)  # warm-up, not timed
    rows, masks = [], []
    for path in cfg["images"]:
        image = load_image(path)
        t = time.perf_counter()
        if cfg.get("budgets"):
            emb = pred.encode(image)
            per = {}
            for b in cfg["budgets"]:
                recs, st = AutomaticMaskGenerator(pred, **dict(kw, max_prompts=b)).generate(
                    emb, return_stats=True
                )
                per[str(b)] = {"rles": [r["segmentation"] for r in recs], "prompts": st["prompts"]}
            masks.append(per)
            rows.append({"image": Path(path).name})
            continue
        recs, st = AutomaticMaskGenerator(pred, **kw).generate(image, return_stats=True)
        total = time.perf_counter() - t
        masks.append([r["segmentation"] for r in recs])
        rows.append(
            {
                "image": Path(path).name,
                "total_s": round(total, 3),
                "encoder_s": round(st["encoder_s"], 3),
                "decoder_s": round(st["decoder_s"], 3),
                "prompts": st["prompts"],
                "decoder_calls": st["decoder_calls"],
                "level_prompts": st["level_prompts"],
                "masks": st["masks"],
            }
        )
        print(f"{cfg['name']} {Path(path).name}: {rows[-1].get('total_s')} s", file=sys.stderr)
    Path(cfg["out"]).write_text(json.dumps({"rows": rows, "masks": masks}))
    info = {"peak_rss_mb": peak_rss_mb(), "precision": pred.precision, "providers": pred.providers}
    print(json.dumps(info))


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(cfg)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{cfg['name']} failed:\n{proc.stderr[-4000:]}")
    out = json.loads(Path(cfg["out"]).read_text())
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# --- oracle: where the prompts go, without a model ----------------------------------------------------


def oracle_sampling(n_images: int, size: int, budgets: list[int], points_per_side: int) -> dict[str, Any]:
    """Synthetic images (:func:`~edgesam_backend.training.synthetic.make_image`, seed 2) and a decoder
    that answers every point with the ground-truth region under it (an object's visible mask, or the
    background as one region), confidently on all tokens: grid vs coverage at each budget, GT recall@0.5
    and prompts. Isolates the prompt placement from the model's quality."""
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.base import BasePredictor
    from edgesam_backend.runtime.masks import stability_score
    from edgesam_backend.training.synthetic import make_image

    class Oracle(BasePredictor):
        def __init__(self, masks: np.ndarray) -> None:
            super().__init__()
            h, w = masks.shape[1:]
            regions = np.concatenate([masks, ~masks.any(0, keepdims=True)])
            s = 256 / max(h, w)  # low-res cells of the 1024 model frame
            yy, xx = np.mgrid[0:256, 0:256]
            oy = np.clip(((yy + 0.5) / s).astype(int), 0, h - 1)
            ox = np.clip(((xx + 0.5) / s).astype(int), 0, w - 1)
            inside = ((yy + 0.5) / s < h) & ((xx + 0.5) / s < w)
            self.low = [np.where(r[oy, ox] & inside, 8.0, -8.0).astype(np.float32) for r in regions]
            self.label = np.argmax(np.concatenate([regions]), axis=0)
            self.s = s

        def _encode_tensor(self, x):
            return np.zeros((1, 256, 64, 64), np.float32)

        def _decode(self, embeddings, coords, labels, mask_input):
            b = coords.shape[0]
            low = np.empty((b, 4, 256, 256), np.float32)
            h, w = self.label.shape
            for i in range(b):
                x, y = coords[i, 0] / 4 / self.s
                low[i] = self.low[self.label[min(int(y), h - 1), min(int(x), w - 1)]]
            return low, np.full((b, 4), 0.9, np.float32), stability_score(low)

    rng = np.random.default_rng(2)
    rows: dict[str, list[tuple[int, float | None]]] = {}
    for _ in range(n_images):
        img = make_image(rng, size, size)
        pred = Oracle(img.masks)
        emb = pred.encode(img.image)
        gt = [_encode(m) for m in img.masks]
        for name, kw in [("grid", {})] + [
            (f"coverage_{b}", {"strategy": "coverage", "max_prompts": b}) for b in budgets
        ]:
            gen = AutomaticMaskGenerator(pred, points_per_side=points_per_side, output_mode="coco_rle", **kw)
            recs, st = gen.generate(emb, return_stats=True)
            got = [r["segmentation"] for r in recs]
            rows.setdefault(name, []).append((st["prompts"], matched(gt, got, GT_IOU), len(gt)))
    return {
        "what": " ".join((oracle_sampling.__doc__ or "").split()),
        "images": n_images,
        "size": size,
        **{
            name: {
                "mean_prompts": round(statistics.fmean(p for p, _, _ in r), 1),
                "gt_recall0.5": round(sum(m for _, m, _ in r) / max(1, sum(t for _, _, t in r)), 4),
            }
            for name, r in rows.items()
        },
    }


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    r["counts"] = r["counts"].decode("ascii")
    return r


# --- matching ----------------------------------------------------------------------------------------


def _rles(objs: list[dict]) -> list[dict]:
    return [
        {"size": r["size"], "counts": r["counts"].encode() if isinstance(r["counts"], str) else r["counts"]}
        for r in objs
    ]


def matched(ref: list[dict], got: list[dict], thresh: float) -> int:
    """How many of ``ref`` a distinct mask of ``got`` matches at IoU >= ``thresh`` (greedy by IoU)."""
    if not ref or not got:
        return 0
    from pycocotools import mask as mask_utils

    iou = np.asarray(mask_utils.iou(_rles(got), _rles(ref), [0] * len(ref)))  # (got, ref)
    n, used_g, used_r = 0, set(), set()
    for flat in np.argsort(-iou, axis=None):
        g, r = np.unravel_index(flat, iou.shape)
        if iou[g, r] < thresh:
            break
        if g in used_g or r in used_r:
            continue
        used_g.add(g), used_r.add(r)
        n += 1
    return n


def recall(refs: list[list[dict]], gots: list[list[dict]], thresh: float) -> float | None:
    total = sum(len(r) for r in refs)
    if not total:
        return None
    return round(sum(matched(r, g, thresh) for r, g in zip(refs, gots, strict=True)) / total, 4)


def load_coco(d: Path, n: int) -> tuple[list[Path], list[list[dict]]]:
    """The first ``n`` images of a COCO folder and their ground-truth RLEs."""
    from pycocotools import mask as mask_utils

    coco = json.loads((d / "annotations.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])[:n]
    by_image: dict[int, list[dict]] = {}
    for a in coco["annotations"]:
        seg = a["segmentation"]
        if isinstance(seg, list):  # polygons
            seg = mask_utils.merge(mask_utils.frPyObjects(seg, a["height"], a["width"]))
        by_image.setdefault(a["image_id"], []).append(seg)
    paths = [d / "images" / im["file_name"] for im in images]
    return paths, [by_image.get(im["id"], []) for im in images]


def summarise(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {
        f"median_{k}": round(statistics.median(r[k] for r in rows), 3) for k in ("total_s", "decoder_s")
    }
    out["mean_prompts"] = round(statistics.fmean(r["prompts"] for r in rows), 1)
    out["mean_decoder_calls"] = round(statistics.fmean(r["decoder_calls"] for r in rows), 1)
    out["mean_masks"] = round(statistics.fmean(r["masks"] for r in rows), 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CKPT, help="official-format (no proposal head)"
    )
    ap.add_argument("--images", type=int, default=2, help="the first N images (shared photos or --coco)")
    ap.add_argument("--coco", type=Path, default=None, help="COCO folder with ground truth (images/ + json)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--points-per-side", type=int, default=32, help="the grid (old) / finest level (new)")
    ap.add_argument("--onnx-dir", type=Path, default=None, help="reuse exports: DIR/plain and DIR/fast")
    ap.add_argument("--max-prompts", type=int, default=320, help="the new default's budget (quickstart)")
    ap.add_argument("--curve", type=int, nargs="*", default=[64, 128, 256], help="budgets of the curve")
    ap.add_argument(
        "--stability-thresh",
        type=float,
        default=None,
        help="stability_score_thresh (and coverage_stability_thresh) of every run (default: SAM's 0.95)",
    )
    ap.add_argument("--oracle", type=int, default=6, help="synthetic images of the oracle section; 0 skips")
    ap.add_argument("--decoder-repeats", type=int, default=3, help="benchmarks/decoder.py repeats; 0 skips")
    add_model_arguments(ap)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    t_start = time.perf_counter()

    tmp = Path(tempfile.mkdtemp(prefix="edgesam-everything-"))
    onnx = args.onnx_dir or tmp
    if args.onnx_dir is None:
        from edgesam_backend.export.onnx import export_onnx

        export_onnx(args.checkpoint, tmp / "plain", fast_decoder=False)
        export_onnx(args.checkpoint, tmp / "fast")
    for variant in ("plain", "fast"):
        ensure_precision_files(onnx / variant, args.precision)
    if args.coco:
        paths, gt = load_coco(args.coco, args.images)
    else:
        paths, gt = list_images()[: args.images], None
    images = [str(p) for p in paths]
    grid_kw: dict[str, Any] = {"points_per_side": args.points_per_side, "points_per_batch": 64}
    new_kw = {**grid_kw, "strategy": "coverage", "max_prompts": args.max_prompts}
    if args.stability_thresh is not None:
        grid_kw["stability_score_thresh"] = args.stability_thresh
        new_kw.update(
            stability_score_thresh=args.stability_thresh, coverage_stability_thresh=args.stability_thresh
        )
    base = {"threads": args.threads, "images": images, "device": args.device, "precision": args.precision}
    runs = {
        "old_grid": {**base, "onnx_dir": str(onnx / "plain"), "max_decode_batch": None, "generator": grid_kw},
        "new_default": {
            **base,
            "onnx_dir": str(onnx / "fast"),
            "max_decode_batch": "auto",
            "generator": new_kw,
        },
    }
    res = {}
    for name, cfg in runs.items():
        res[name] = run_child({**cfg, "name": name, "out": str(tmp / f"{name}.json")})
    curve_budgets = sorted(set(args.curve))
    curve = None
    if curve_budgets:
        cfg = {
            **runs["new_default"],
            "name": "curve",
            "out": str(tmp / "curve.json"),
            "budgets": curve_budgets,
        }
        curve = run_child(cfg)

    old_masks, new_masks = res["old_grid"]["masks"], res["new_default"]["masks"]
    out: dict[str, Any] = {
        "benchmark": "everything",
        "weights": args.checkpoint.name,
        "images": [Path(p).name for p in images],
        "threads": args.threads,
        "device": args.device,
        "precision": args.precision,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    for name in runs:
        out[name] = {
            "settings": runs[name]["generator"] | {"max_decode_batch": runs[name]["max_decode_batch"]},
            "decoder": Path(runs[name]["onnx_dir"]).name,
            **summarise(res[name]["rows"]),
            "peak_rss_mb": res[name]["peak_rss_mb"],
            "precision": res[name]["precision"],
            "providers": res[name]["providers"],
            "per_image": res[name]["rows"],
        }
    o, n = out["old_grid"], out["new_default"]
    out["ratios"] = {
        "speedup_per_image": round(o["median_total_s"] / max(n["median_total_s"], 1e-9), 2),
        "prompt_ratio": round(o["mean_prompts"] / max(n["mean_prompts"], 1e-9), 2),
        "grid_masks_kept_iou0.8": recall(old_masks, new_masks, MATCH_IOU),
    }
    if gt is not None:
        g_old, g_new = recall(gt, old_masks, GT_IOU), recall(gt, new_masks, GT_IOU)
        out["ratios"]["gt_recall0.5_old"] = g_old
        out["ratios"]["gt_recall0.5_new"] = g_new
        out["ratios"]["gt_recall_ratio"] = round(g_new / g_old, 3) if g_old else None
    if curve is not None:
        pts = []
        for b in curve_budgets:
            got = [m[str(b)]["rles"] for m in curve["masks"]]
            row = {
                "max_prompts": b,
                "mean_prompts": round(statistics.fmean(m[str(b)]["prompts"] for m in curve["masks"]), 1),
                "grid_masks_kept_iou0.8": recall(old_masks, got, MATCH_IOU),
            }
            if gt is not None:
                row["gt_recall0.5"] = recall(gt, got, GT_IOU)
            pts.append(row)
        pts.append(
            {
                "max_prompts": args.max_prompts,
                "mean_prompts": n["mean_prompts"],
                "grid_masks_kept_iou0.8": out["ratios"]["grid_masks_kept_iou0.8"],
                **({"gt_recall0.5": out["ratios"]["gt_recall0.5_new"]} if gt is not None else {}),
            }
        )
        pts.append(
            {
                "max_prompts": "grid",
                "mean_prompts": o["mean_prompts"],
                "grid_masks_kept_iou0.8": 1.0,
                **({"gt_recall0.5": out["ratios"]["gt_recall0.5_old"]} if gt is not None else {}),
            }
        )
        out["curve"] = pts
    if args.oracle > 0:
        out["oracle_sampling"] = oracle_sampling(
            args.oracle, 512, [*curve_budgets, args.max_prompts], args.points_per_side
        )
    if args.decoder_repeats > 0:
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("decoder.py")),
            "--checkpoint",
            str(args.checkpoint),
        ]
        cmd += ["--threads", str(args.threads), "--repeats", str(args.decoder_repeats)]
        cmd += ["--device", args.device]
        if args.precision in ("fp32", "fp16"):
            cmd += ["--precision", args.precision]
        out["decoder_per_prompt"] = json.loads(
            subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        )
    import onnxruntime

    out["versions"] = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__}
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
