"""Quality on synthetic shapes: train EdgeSAM from random init, then measure it against the ground truth.

Cached model (other tools read it; reused when present, ``--retrain`` to rebuild):
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/finetune/edge_sam_finetuned.pth
        ``{"model": state_dict, "image_size": SIZE}`` (:func:`edgesam_backend.model.checkpoint.with_metadata`)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/rpn/edge_sam_rpn.pth  (same encoder + ``rpn_head.*``)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/finetune-ext/, rpn-finetune-ext/  (``--extend-steps``:
        stage 2, continued from stage 1 with a fresh schedule; then the model every report uses)
    ~/.cache/edgesam-bench/synthetic/s{SIZE}-n{TRAIN}/untrained-report.json  (the untrained model's reports:
        seeded init and fixed data make it a constant of the setting, so it is computed once)
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
* ``everything`` (``--modes``, default all of :data:`MODES`: grid 32x32, grid 16x16, proposals K=100):
  recall / precision at mask IoU 0.5 / 0.75 against the GT instances, masks, decoder prompts and
  seconds per image (TorchPredictor at the model's ``image_size``, RPN head from the step above).
* ``int8``: the exported encoder quantized (32 training images) vs fp32: box mIoU drop and the
  best-mask agreement on held-out images.
* ``rpn``: proposal recall@IoU 0.5/0.75 at K = 10/100 (:func:`~edgesam_backend.training.rpn.evaluate_recall`).

Prints one JSON object (``--out FILE`` also writes it).

Usage: python benchmarks/quality.py [--size 256] [--train 2000] [--val 200] [--budget-min 25] [--threads 2]
       [--extend-steps N --extend-lr 5e-4]
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


def work_dir(size: int, n_train: int, cache: Path = CACHE) -> Path:
    """Cache folder of one (size, train count) setting."""
    return cache / f"s{size}-n{n_train}"


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
        cfg = _ft_config(work, size, threads, work / "probe", probe)
        cfg.update(val_at_start=False, val_every=0, checkpoint_every=0, val_max_images=1)
        per_step = finetune(FinetuneConfig.model_validate(cfg), log=log)["seconds"] / probe  # loop time only
        steps = max(10, int(budget_s / per_step))
        plan.write_text(json.dumps({"max_steps": steps, "probe_s_per_step": per_step}))
        log(f"probe: {per_step:.2f} s/step → max_steps {steps}")
    finetune(
        FinetuneConfig.model_validate(_ft_config(work, size, threads, work / "finetune", steps)), log=log
    )
    return final


def extend_model(
    work: Path, size: int, threads: int, steps: int, lr: float, log: Callable[[str], Any]
) -> Path:
    """Stage 2: ``steps`` more fine-tuning steps from the stage-1 checkpoint (``init:`` its path), a
    fresh warm-up + cosine from ``lr``, into ``work/finetune-ext`` (resumable like stage 1)."""
    from edgesam_backend.training.finetune import FINAL_NAME, finetune
    from edgesam_backend.training.finetune_config import FinetuneConfig

    out = work / "finetune-ext"
    final = out / FINAL_NAME
    if not final.is_file():
        cfg = _ft_config(work, size, threads, out, steps)
        cfg.update(init=str(work / "finetune" / FINAL_NAME), lr=lr, warmup_steps=50)
        finetune(FinetuneConfig.model_validate(cfg), log=log)
    return final


def train_rpn_head(
    work: Path, size: int, threads: int, steps: int, log: Callable[[str], Any], stage: str = "finetune"
) -> Path:
    """Region proposal head on the frozen encoder of ``work/stage``; its checkpoint (model + head)."""
    from edgesam_backend.training.rpn import RpnTrainConfig, train_rpn

    out = work / ("rpn" if stage == "finetune" else f"rpn-{stage}")
    final = out / "edge_sam_rpn.pth"
    if final.is_file():
        return final
    cfg = RpnTrainConfig(
        train_images=work / "train" / "images",
        train_annotations=work / "train" / "annotations.json",
        output_dir=out,
        checkpoint=str(work / stage / "edge_sam_finetuned.pth"),
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


def _gt_instances(work: Path, limit: int | None) -> list[tuple[Path, np.ndarray]]:
    """Held-out ``(image file, GT masks (G, H, W) bool)`` in the original frame."""
    from edgesam_backend.formats.coco import decode_segmentation
    from edgesam_backend.training.finetune_data import read_coco_masks

    recs = read_coco_masks(work / "val" / "images", work / "val" / "annotations.json")[:limit]
    out = []
    for r in recs:
        g = [decode_segmentation(s, r.height, r.width) for s in r.segmentations]
        out.append((r.file, np.stack(g).astype(bool) if g else np.zeros((0, r.height, r.width), bool)))
    return out


def _match(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Mask IoU matrix ``(P, G)`` of bool stacks ``(P, H, W)`` and ``(G, H, W)`` (one GT at a time)."""
    from edgesam_backend.runtime.masks import mask_iou

    return np.stack([mask_iou(pred, g[None], empty=0.0) for g in gt], axis=1)


def everything(
    predictor: Any, data: list[tuple[Path, np.ndarray]], run: Callable[..., Any]
) -> dict[str, Any]:
    """Recall / precision at mask IoU 0.5 / 0.75 of ``run(generator_input) → (records, stats)`` against
    the GT instances; masks and decoder prompts per image, seconds per image (decoder and total)."""
    from edgesam_backend.runtime.image import load_image

    hits = {t: [0, 0] for t in (0.5, 0.75)}  # matched GT, matched predictions
    n_gt = n_pred = prompts = 0
    dec_s = tot_s = 0.0
    for path, gt in data:
        emb = predictor.encode(load_image(path))
        t0 = time.perf_counter()
        records, st = run(emb)
        tot_s += time.perf_counter() - t0
        dec_s += float(st.get("decoder_s", 0.0))
        prompts += int(st.get("prompts", 0))
        masks = (
            np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *gt.shape[1:]), bool)
        )
        n_gt, n_pred = n_gt + len(gt), n_pred + len(masks)
        if len(gt) and len(masks):
            iou = _match(masks, gt)
            for t in hits:
                hits[t][0] += int((iou.max(0) >= t).sum())
                hits[t][1] += int((iou.max(1) >= t).sum())
    n = max(len(data), 1)
    out: dict[str, Any] = {}
    for t, (g, p) in hits.items():
        out[f"recall@{t}"] = round(g / max(n_gt, 1), 4)
        out[f"precision@{t}"] = round(p / max(n_pred, 1), 4)
    out.update(
        masks_per_image=round(n_pred / n, 2),
        gt_per_image=round(n_gt / n, 2),
        prompts_per_image=round(prompts / n, 1),
        decoder_s_per_image=round(dec_s / n, 4),
        seconds_per_image=round(tot_s / n, 4),
    )
    return out


def _grid(side: int, **mode_kw: Any) -> Callable[..., dict[str, Any]]:
    def run(predictor: Any, data: list[tuple[Path, np.ndarray]], amg_kw: dict[str, Any]) -> dict[str, Any]:
        from edgesam_backend.runtime.amg import AutomaticMaskGenerator

        gen = AutomaticMaskGenerator(predictor, points_per_side=side, **mode_kw, **amg_kw)
        return everything(predictor, data, lambda emb: gen.generate(emb, return_stats=True))

    return run


def _proposals(k: int) -> Callable[..., dict[str, Any]]:
    def run(predictor: Any, data: list[tuple[Path, np.ndarray]], amg_kw: dict[str, Any]) -> dict[str, Any]:
        from edgesam_backend.runtime.amg import AutomaticMaskGenerator

        gen = AutomaticMaskGenerator(
            predictor, points_per_side=None, point_grids=[np.zeros((1, 2))], **amg_kw
        )
        return everything(predictor, data, lambda emb: gen.generate_from_proposals(emb, k, return_stats=True))

    return run


#: Everything-mode variants: name → ``fn(predictor, held-out data, amg kwargs) → metrics``. Other modes
#: (e.g. a coverage-driven one in runtime/amg) join by adding an entry; the predictor carries the RPN head.
MODES: dict[str, Callable[[Any, list[tuple[Path, np.ndarray]], dict[str, Any]], dict[str, Any]]] = {
    "grid32": _grid(32),
    "grid16": _grid(16),
    "proposals100": _proposals(100),
    # the shipped default (quickstart pipeline, Label Studio batch): coverage over the 32x32 grid,
    # 320 prompts at most, proposals first when the model has the head
    "coverage32": _grid(32, strategy="coverage", max_prompts=320),
}


#: Threshold sweep (``--sweep N``): stability thresholds at SAM's IoU threshold and with it off.
SWEEP_STABILITY = (0.6, 0.7, 0.8, 0.9, 0.95)
SWEEP_IOU = (0.0, 0.88)


def threshold_sweep(predictor: Any, data: list[tuple[Path, np.ndarray]], side: int = 16) -> dict[str, Any]:
    """Everything-mode recall / precision on ``data`` for each (``pred_iou_thresh``,
    ``stability_score_thresh``) of :data:`SWEEP_IOU` x :data:`SWEEP_STABILITY` (grid ``side`` x ``side``;
    ``quality_score="iou"`` so that both thresholds apply): what the automatic-mask defaults rest on."""
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator

    out: dict[str, Any] = {"grid": side, "images": len(data)}
    for iou in SWEEP_IOU:
        for stab in SWEEP_STABILITY:
            gen = AutomaticMaskGenerator(
                predictor,
                points_per_side=side,
                quality_score="iou",
                pred_iou_thresh=iou,
                stability_score_thresh=stab,
            )
            r = everything(predictor, data, lambda e, g=gen: g.generate(e, return_stats=True))
            keys = ("recall@0.5", "precision@0.5", "recall@0.75", "precision@0.75", "masks_per_image")
            out[f"iou{iou}_stability{stab}"] = {k: r[k] for k in keys}
    return out


def int8_report(work: Path, model_path: Path, data: list[tuple[Path, np.ndarray]]) -> dict[str, Any]:
    """Export ``model_path`` (cached under ``work/onnx/<its folder>-<its stem>``), quantize the encoder
    on 32 training images, and compare int8 with fp32 on the held-out images: box-prompt mIoU ×100 of
    each against the GT and the best-mask agreement (:func:`edgesam_backend.export.agreement.agreement`)."""
    from edgesam_backend.export.agreement import agreement
    from edgesam_backend.export.int8 import quantize_encoder
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.runtime.image import load_image
    from edgesam_backend.runtime.masks import mask_iou
    from edgesam_backend.runtime.predictor import OnnxPredictor

    d = work / "onnx" / f"{model_path.parent.name}-{model_path.stem}"  # one folder per stage's model
    if not (d / "encoder.int8.onnx").is_file():
        export_onnx(model_path, d)
        calib = sorted((work / "train" / "images").iterdir())[:32]
        quantize_encoder(d / "encoder.onnx", d / "encoder.int8.onnx", calib)
    fp32 = OnnxPredictor(d / "encoder.onnx", d / "decoder.onnx")
    int8 = OnnxPredictor(d / "encoder.int8.onnx", d / "decoder.onnx")
    out: dict[str, Any] = {}
    for name, pred in (("fp32", fp32), ("int8", int8)):
        ious = []
        for path, gt in data:
            pred.set_image(load_image(path))
            for g in gt:
                ys, xs = np.nonzero(g)
                box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                m = pred.predict(box=box, num_multimask_outputs=1).masks[0]
                ious.append(float(mask_iou(m, g)))
        out[f"box_miou_{name}"] = round(float(np.mean(ious) * 100), 2) if ious else None
    if out["box_miou_fp32"] is not None:
        out["box_miou_drop"] = round(out["box_miou_fp32"] - out["box_miou_int8"], 2)
    agr = agreement(fp32, int8, [p for p, _ in data])
    out["agreement_mean_iou"] = agr["mean_iou"]
    out["agreement_min_iou"] = agr["min_iou"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--budget-min", type=float, default=25.0, help="fine-tuning wall-clock budget")
    ap.add_argument("--rpn-steps", type=int, default=300)
    ap.add_argument("--extend-steps", type=int, default=0, help="stage 2: more steps from the stage-1 model")
    ap.add_argument("--extend-lr", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=None, help="held-out images scored (default all)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated keys of MODES")
    ap.add_argument("--stability-thresh", type=float, default=None, help="everything mode (default: amg's)")
    ap.add_argument("--iou-thresh", type=float, default=None, help="only with quality_score=iou")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument(
        "--cache", type=Path, default=CACHE, help="cache root (default ~/.cache/edgesam-bench/...)"
    )
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument(
        "--sweep", type=int, default=0, metavar="N", help="only the threshold sweep on N held-out images"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import shutil

    import torch

    from edgesam_backend.model.checkpoint import load_edge_sam, with_metadata
    from edgesam_backend.model.edge_sam import build_edge_sam
    from edgesam_backend.training.finetune_data import MaskDataset, read_coco_masks
    from edgesam_backend.training.rpn import CocoBoxes, evaluate_recall

    def log(m: str) -> None:
        print(m, flush=True)

    torch.set_num_threads(args.threads)
    work = work_dir(args.size, args.train, args.cache)
    if args.retrain:
        for sub in ("finetune", "probe", "rpn", "finetune_plan.json", "finetune-ext", "rpn-finetune-ext"):
            p = work / sub
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    ensure_data(work, args.size, args.train, args.val)
    final = train_model(work, args.size, args.threads, args.budget_min * 60, log)
    stage = "finetune"
    if args.extend_steps:
        final = extend_model(work, args.size, args.threads, args.extend_steps, args.extend_lr, log)
        stage = "finetune-ext"
    train_s = time.perf_counter() - t0
    rpn_path = train_rpn_head(work, args.size, args.threads, args.rpn_steps, log, stage)
    val = MaskDataset(read_coco_masks(work / "val" / "images", work / "val" / "annotations.json"), args.size)
    boxes = CocoBoxes(work / "val" / "images", work / "val" / "annotations.json", args.size)
    trained = load_edge_sam(final, image_size=None)
    with_rpn = load_edge_sam(rpn_path, image_size=args.size, with_rpn=True)
    modes = [m for m in args.modes.split(",") if m]
    from edgesam_backend.model.predictor import TorchPredictor

    data = _gt_instances(work, args.eval_images)
    if args.sweep:
        sweep = threshold_sweep(TorchPredictor(with_rpn), data[: args.sweep])
        emit = {"checkpoint": str(final), "threshold_sweep": sweep}
        print(json.dumps(emit, indent=2))
        if args.out:
            args.out.write_text(json.dumps(emit, indent=2))
        return
    amg_kw = {
        k: v
        for k, v in (("pred_iou_thresh", args.iou_thresh), ("stability_score_thresh", args.stability_thresh))
        if v is not None
    }

    # The untrained model is a constant of the setting (seeded init, fixed data): each of its parts
    # is computed once and cached in work/untrained-report.json.
    cache_file = work / "untrained-report.json"
    known: dict[str, Any] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    untrained_model: list[Any] = []

    def untrained() -> Any:
        if not untrained_model:
            torch.manual_seed(0)
            untrained_model.append(build_edge_sam(image_size=args.size, with_rpn=True))
            torch.save(with_metadata(untrained_model[0].state_dict(), args.size), work / "untrained.pth")
        return untrained_model[0]

    def untrained_path() -> Path:
        untrained()
        return work / "untrained.pth"

    def part(trained_run: bool, name: str, fn: Callable[[], Any]) -> Any:
        if trained_run:
            return fn()
        key = json.dumps([name, args.eval_images, amg_kw if name.startswith("everything") else {}])
        if key not in known:
            known[key] = fn()
            cache_file.write_text(json.dumps(known))
        return known[key]

    def report(is_trained: bool) -> dict[str, Any]:
        model = (lambda: trained) if is_trained else untrained
        head = (lambda: with_rpn) if is_trained else untrained
        out: dict[str, Any] = {
            "prompted": part(is_trained, "prompted", lambda: prompted(model(), val, args.eval_images)),
            "rpn": part(is_trained, "rpn", lambda: evaluate_recall(head(), boxes, args.eval_images)),
            "everything": {
                m: part(
                    is_trained, f"everything.{m}", lambda m=m: MODES[m](TorchPredictor(head()), data, amg_kw)
                )
                for m in modes
            },
        }
        if not args.no_int8:
            out["int8"] = part(
                is_trained,
                "int8",
                lambda: int8_report(work, final if is_trained else untrained_path(), data[:20]),
            )
        return out

    result: dict[str, Any] = {
        "setting": {"size": args.size, "train": args.train, "val": args.val, "threads": args.threads},
        "checkpoint": str(final),
        "rpn_checkpoint": str(rpn_path),
        "train_and_data_s": round(train_s, 1),
        "finetune_metrics": json.loads((work / "finetune" / "metrics.json").read_text()),
        "extend_metrics": (
            json.loads((work / stage / "metrics.json").read_text()) if args.extend_steps else None
        ),
        "trained": report(True),
        "untrained": report(False),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
