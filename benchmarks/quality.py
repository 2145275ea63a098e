"""Quality on synthetic shapes: train EdgeSAM from random init, then measure it against the ground truth.

Cached model (other tools read it; reused when present, ``--retrain`` to rebuild):
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/finetune/edge_sam_finetuned.pth
        ``{"model": state_dict, "image_size": SIZE}`` (:func:`edgesam_backend.model.checkpoint.with_metadata`)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/rpn/edge_sam_rpn.pth  (same encoder + ``rpn_head.*``)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/val/{images/,annotations.json}  (held-out COCO)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/train/...                        (training COCO)
Data: :func:`edgesam_backend.training.synthetic.write_coco_dataset`, train seed 1, held-out seed 2.

Steps: data (if absent) → ``edgesam finetune`` from ``init: random`` at ``--size`` for a wall-clock
``--budget-min`` (a 4-step probe measures seconds per step; ``max_steps`` = budget / that, so the
cosine schedule ends on time) → the region proposal head trained on the frozen fine-tuned encoder →
reports on the held-out images, for the trained and the untrained (seeded random init) model:

* ``prompted``: mIoU ×100 per prompt kind, overall and per COCO size bin (model frame, un-padded):
  ``box`` (token 0); ``point_token0`` / ``point_best3`` (one positive point at the mask's
  distance-transform centre; token 0, or the best of the 3 ambiguity tokens by stability score);
  ``point+1`` / ``point+2`` correction clicks (:func:`~edgesam_backend.training.prompts.correction_clicks`)
  with the previous low-res logits as mask input, and ``..._nomask`` without it.
* ``modes`` (``--modes``, default all registered in :data:`MODES`): everything-mode recall/precision
  against the GT instances. They need the runtime predictor at the model's ``image_size``; until the
  runtime takes a size other than 1024 they report ``{"skipped": reason}``.
* ``rpn``: proposal recall@IoU 0.5/0.75 at K = 10/100 (:func:`~edgesam_backend.training.rpn.evaluate_recall`).

Prints one JSON object (``--out FILE`` also writes it).

Usage: python benchmarks/quality.py [--size 256] [--train 2000] [--val 200] [--budget-min 25] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CACHE = Path.home() / ".cache" / "edgesam-bench" / "synthetic"

#: Recipe that learns from random init on CPU (tests/test_finetune.py LEARNING_RECIPE): the encoder
#: trains, focal:Dice 1:1 (SAM's 20:1 collapses to a background bias from scratch), peak LR 1e-3.
RECIPE: dict[str, Any] = {
    "init": "random",
    "freeze": "none",
    "lr": 1e-3,
    "warmup_steps": 20,
    "batch_size": 4,
    "prompts": {"max_objects": 8, "correction_rounds": 1},
    "loss": {"focal_weight": 1.0, "dice_weight": 1.0},
}


def work_dir(size: int, n_train: int) -> Path:
    """Cache folder of one (size, train count) setting."""
    return CACHE / f"s{size}-n{n_train}"


def ensure_data(work: Path, size: int, n_train: int, n_val: int) -> None:
    """Synthetic train/held-out COCO under ``work`` (skipped when the annotations exist)."""
    from edgesam_backend.training.synthetic import write_coco_dataset

    for name, n, seed in (("train", n_train, 1), ("val", n_val, 2)):
        if not (work / name / "annotations.json").is_file():
            write_coco_dataset(work / name, n, size=size, seed=seed)


def _ft_config(work: Path, size: int, threads: int, out: Path, steps: int) -> dict[str, Any]:
    cfg = {
        "train_images": str(work / "train" / "images"),
        "train_annotations": str(work / "train" / "annotations.json"),
        "val_images": str(work / "val" / "images"),
        "val_annotations": str(work / "val" / "annotations.json"),
        "output_dir": str(out),
        "image_size": size,
        "max_steps": steps,
        "threads": threads,
        "val_max_images": 20,
        "val_at_start": False,
        "checkpoint_every": 100,
        "log_every": 20,
        "seed": 0,
    }
    cfg.update(json.loads(json.dumps(RECIPE)))
    return cfg


def train_model(work: Path, size: int, threads: int, budget_s: float, log: Callable[[str], Any]) -> Path:
    """Fine-tune from random init within ``budget_s`` (resumes an interrupted run); the checkpoint."""
    from edgesam_backend.training.finetune import FINAL_NAME, finetune
    from edgesam_backend.training.finetune_config import FinetuneConfig

    final = work / "finetune" / FINAL_NAME
    if final.is_file():
        return final
    plan = work / "finetune_plan.json"
    if plan.is_file():
        steps = int(json.loads(plan.read_text())["max_steps"])
    else:
        probe = 4
        t0 = time.perf_counter()
        cfg = _ft_config(work, size, threads, work / "probe", probe)
        cfg.update(val_at_start=False, val_every=0, checkpoint_every=0, val_max_images=1)
        finetune(FinetuneConfig.model_validate(cfg), log=log)
        per_step = (time.perf_counter() - t0) / probe
        steps = max(50, int(budget_s / per_step))
        plan.write_text(json.dumps({"max_steps": steps, "probe_s_per_step": per_step}))
        log(f"probe: {per_step:.2f} s/step → max_steps {steps}")
    finetune(
        FinetuneConfig.model_validate(_ft_config(work, size, threads, work / "finetune", steps)), log=log
    )
    return final


def train_rpn_head(work: Path, size: int, threads: int, steps: int, log: Callable[[str], Any]) -> Path:
    """Region proposal head on the frozen fine-tuned encoder; its checkpoint (full model + head)."""
    from edgesam_backend.training.rpn import RpnTrainConfig, train_rpn

    out = work / "rpn"
    final = out / "edge_sam_rpn.pth"
    if final.is_file():
        return final
    cfg = RpnTrainConfig(
        train_images=work / "train" / "images",
        train_annotations=work / "train" / "annotations.json",
        output_dir=out,
        checkpoint=str(work / "finetune" / "edge_sam_finetuned.pth"),
        input_size=size,
        freeze_encoder=True,
        max_steps=steps,
        batch_size=8,
        lr=2e-3,
        warmup_steps=20,
        threads=threads,
        log_every=50,
    )
    train_rpn(cfg, log=log)
    return final


def prompted(model: Any, data: Any, max_images: int | None = None) -> dict[str, Any]:
    """Prompted mIoU ×100 (see the module docstring) on a :class:`~..finetune_data.MaskDataset`."""
    import torch

    from edgesam_backend.model.edge_sam import stability_score
    from edgesam_backend.training.evaluate import mask_iou, size_bin
    from edgesam_backend.training.finetune import decode
    from edgesam_backend.training.prompts import center_point, correction_clicks

    model.eval()
    rows: dict[str, list[np.ndarray]] = {}
    sizes: list[str] = []

    def add(kind: str, full: torch.Tensor, tok: torch.Tensor, gt: torch.Tensor, hw: tuple[int, int]) -> None:
        h, w = hw
        pick = full[torch.arange(len(tok)), tok]
        rows.setdefault(kind, []).append(mask_iou(pick[:, :h, :w] > 0, gt[:, :h, :w]))

    n = len(data) if max_images is None else min(len(data), max_images)
    with torch.inference_mode():
        for i in range(n):
            b = data[i]
            if b.masks.shape[0] == 0:
                continue
            gt, hw, k = b.masks, b.input_hw, b.masks.shape[0]
            sizes += [size_bin(float(a)) for a in gt.flatten(1).sum(1)]
            zero = torch.zeros(k, dtype=torch.long)
            emb = model.image_encoder(b.image[None]).expand(k, -1, -1, -1)
            _, _, full = decode(model, emb, b.boxes, None, None, None, 1)
            add("box", full, zero, gt, hw)
            coords = torch.tensor([center_point(m.numpy()) for m in gt], dtype=torch.float32)[:, None]
            labels = torch.ones((k, 1), dtype=torch.long)
            low3, _, full3 = decode(model, emb, None, coords, labels, None, 3)
            add("point_token0", full3, zero, gt, hw)
            best = stability_score(full3).argmax(dim=1)
            add("point_best3", full3, best, gt, hw)
            for with_mask in (True, False):
                c, lab = coords, labels
                low, full = low3[torch.arange(k), best][:, None], full3[torch.arange(k), best][:, None]
                for r in (1, 2):
                    new_c, new_l = correction_clicks(full[:, 0] > 0, gt)
                    c, lab = torch.cat([c, new_c], 1), torch.cat([lab, new_l], 1)
                    low, _, full = decode(model, emb, None, c, lab, low[:, :1] if with_mask else None, 1)
                    add(f"point+{r}" + ("" if with_mask else "_nomask"), full, zero, gt, hw)
    out: dict[str, Any] = {"instances": len(sizes)}
    bins = np.array(sizes)
    for kind, parts in rows.items():
        v = np.concatenate(parts)
        per = {
            s: round(float(np.nanmean(v[bins == s]) * 100), 2)
            for s in ("small", "medium", "large")
            if (bins == s).any()
        }
        out[kind] = {"miou": round(float(np.nanmean(v) * 100), 2), **per}
    return out


def _needs_runtime_size(name: str) -> Callable[..., dict[str, Any]]:
    def run(model_path: Path, work: Path, size: int) -> dict[str, Any]:
        from edgesam_backend.runtime import transforms

        if size != transforms.IMAGE_SIZE:
            return {"skipped": f"runtime/transforms is {transforms.IMAGE_SIZE}-only; model is {size}"}
        return {"skipped": f"{name}: not wired yet"}

    return run


#: Everything-mode variants: name → ``fn(model_path, work, size) → dict``. Other modes register here.
MODES: dict[str, Callable[[Path, Path, int], dict[str, Any]]] = {
    "grid32": _needs_runtime_size("grid32"),
    "grid16": _needs_runtime_size("grid16"),
    "proposals100": _needs_runtime_size("proposals100"),
    "int8": _needs_runtime_size("int8"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--budget-min", type=float, default=25.0, help="fine-tuning wall-clock budget")
    ap.add_argument("--rpn-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images scored (default all)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated keys of MODES")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import shutil

    import torch

    from edgesam_backend.model.checkpoint import load_edge_sam
    from edgesam_backend.model.edge_sam import build_edge_sam
    from edgesam_backend.training.finetune_data import MaskDataset, read_coco_masks
    from edgesam_backend.training.rpn import CocoBoxes, evaluate_recall

    def log(m: str) -> None:
        print(m, flush=True)

    torch.set_num_threads(args.threads)
    work = work_dir(args.size, args.train)
    if args.retrain:
        for sub in ("finetune", "probe", "rpn", "finetune_plan.json"):
            p = work / sub
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    ensure_data(work, args.size, args.train, args.val)
    final = train_model(work, args.size, args.threads, args.budget_min * 60, log)
    train_s = time.perf_counter() - t0
    rpn_path = train_rpn_head(work, args.size, args.threads, args.rpn_steps, log)
    val = MaskDataset(read_coco_masks(work / "val" / "images", work / "val" / "annotations.json"), args.size)
    boxes = CocoBoxes(work / "val" / "images", work / "val" / "annotations.json", args.size)
    torch.manual_seed(0)
    untrained = build_edge_sam(image_size=args.size, with_rpn=True)
    trained = load_edge_sam(final, image_size=None)
    with_rpn = load_edge_sam(rpn_path, image_size=args.size, with_rpn=True)
    modes = [m for m in args.modes.split(",") if m]
    result: dict[str, Any] = {
        "setting": {"size": args.size, "train": args.train, "val": args.val, "threads": args.threads},
        "checkpoint": str(final),
        "rpn_checkpoint": str(rpn_path),
        "train_and_data_s": round(train_s, 1),
        "finetune_metrics": json.loads((work / "finetune" / "metrics.json").read_text()),
        "trained": {"prompted": prompted(trained, val, args.eval_images)},
        "untrained": {"prompted": prompted(untrained, val, args.eval_images)},
    }
    result["trained"]["rpn"] = evaluate_recall(with_rpn, boxes, args.eval_images)
    result["untrained"]["rpn"] = evaluate_recall(untrained, boxes, args.eval_images)
    result["modes"] = {m: MODES[m](final, work, args.size) for m in modes}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
