"""``edgesam eval config.yaml``: mIoU of EdgeSAM / SAM models on COCO-format or SA-1B ground truth.

Protocol (EdgeSAM's ``evaluation/eval_mIoU.py``, see ``../shared/docs/edgesam-training.md`` §6):

* Initial prompt per instance: the GT box (XYXY, model frame), or the **centre point**: the mask pixel
  farthest from the boundary (argmax of the distance transform), labelled positive.
* ``refine_iters`` refinement rounds: the current prediction (low-res logits > 0) is compared with the
  GT resized to the low-res grid (nearest to the input size, padded, bilinear to the grid, > 0), both
  restricted to the valid region; one point is drawn uniformly from the error region (FN → positive,
  FP → negative, fewer than 10 pixels → the dummy point with label -2) and appended; the box is
  kept; no mask input. One seeded generator per (model, prompt type), as ``torch.manual_seed(0)`` once.
* Prediction: the first mask token (``num_multimask_outputs: 1``), or with more outputs the IoU-head
  argmax (``score``) or the best against the GT (``oracle``).
* Metric at the original resolution: logits bilinear to the padded input, cropped, bilinear to ``H x W``,
  ``> 0``; the GT goes the same way (nearest to the input size, bilinear back, ``> 0``). IoU per instance;
  mIoU = mean over all instances of the dataset (empty unions dropped) x 100; per-size breakdown with
  COCO's area thresholds (small < 32², medium < 96², large).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..fileio import atomic_write_text
from ..formats.coco import decode_segmentation
from ..runtime import masks, transforms
from ..runtime.masks import center_point
from .data import DistillDataset
from .distill_config import EvalConfig, EvalModelConfig
from .loop import num_threads
from .models import build_student, build_teacher, load_student_weights
from .prompts import sample_disagreement_points

SIZE_BINS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def mask_iou(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> np.ndarray:
    """IoU of bool masks ``(K, H, W)`` → ``(K,)`` float64, NaN where the union is empty."""
    return masks.mask_iou(_numpy(pred), _numpy(gt))


def _numpy(m: np.ndarray | torch.Tensor) -> np.ndarray:
    return m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)


def miou(ious: np.ndarray) -> float:
    """Mean over instances, NaNs dropped, x 100 (NaN if nothing is left)."""
    a = np.asarray(ious, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean() * 100.0) if a.size else float("nan")


def _finite(v: float) -> float | None:
    return None if np.isnan(v) else round(v, 4)


def size_bin(area: float) -> str:
    return next(name for name, lo, hi in SIZE_BINS if lo <= area < hi)


def build_eval_model(m: EvalModelConfig, image_size: int) -> torch.nn.Module:
    if m.type == "sam":
        return build_teacher(m.kind, m.checkpoint, image_size, m.seed)
    with torch.random.fork_rng():
        torch.manual_seed(m.seed)
        model = build_student(image_size, m.arch, m.slim_widths)
    if m.checkpoint is not None:
        load_student_weights(model, m.checkpoint, official=m.arch == "edge_sam")
    return model.eval()


def logits_to_original(
    low_res: torch.Tensor, image_size: int, input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> torch.Tensor:
    """``(K, 1, M, M)`` → ``(K, H, W)`` logits: bilinear to the padded input, crop, bilinear to H x W."""
    x = F.interpolate(low_res.float(), size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(x, size=original_hw, mode="bilinear", align_corners=False)[:, 0]


def gt_views(
    gt: torch.Tensor, image_size: int, input_hw: tuple[int, int], grid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """GT ``(K, H, W)`` bool → (low-res ``(K, M, M)`` bool for refinement, metric GT ``(K, H, W)`` bool)."""
    h, w = gt.shape[-2:]
    x = F.interpolate(gt[:, None].float(), size=input_hw, mode="nearest")
    padded = F.pad(x, (0, image_size - input_hw[1], 0, image_size - input_hw[0]))
    low = F.interpolate(padded, size=(grid, grid), mode="bilinear", align_corners=False)[:, 0] > 0
    back = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)[:, 0] > 0
    return low, back


@torch.no_grad()
def _run_prompts(
    model: torch.nn.Module,
    emb: torch.Tensor,
    kind: str,
    boxes: torch.Tensor,
    points: torch.Tensor,
    gt_low: torch.Tensor,
    gt_metric: torch.Tensor,
    valid_low: torch.Tensor,
    cfg: EvalConfig,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    gen: torch.Generator,
) -> np.ndarray:
    """IoU ``(K, 1 + refine_iters)`` of ``K`` prompts of one image."""
    k = boxes.shape[0]
    pe = model.prompt_encoder
    dense_pe = pe.get_dense_pe()
    grid = gt_low.shape[-1]
    box_in = boxes if kind == "box" else None
    coords = None if kind == "box" else points[:, None, :]
    labels = None if kind == "box" else torch.ones((k, 1), dtype=torch.long, device=emb.device)
    out = np.zeros((k, 1 + cfg.refine_iters))
    for it in range(1 + cfg.refine_iters):
        pts = (coords, labels) if coords is not None else None
        sparse, dense = pe(points=pts, boxes=box_in, masks=None)
        low, iou_pred = model.mask_decoder(emb, dense_pe, sparse, dense, cfg.num_multimask_outputs)
        rows = torch.arange(k, device=emb.device)
        if cfg.num_multimask_outputs == 1 or cfg.select == "first":
            pick = torch.zeros(k, dtype=torch.long, device=emb.device)
        elif cfg.select == "score":
            pick = iou_pred.argmax(dim=1)
        else:  # oracle: best IoU with the GT among the outputs
            c = low.shape[1]
            per = np.stack(
                [
                    mask_iou(
                        logits_to_original(low[:, j : j + 1], cfg.image_size, input_hw, original_hw) > 0,
                        gt_metric,
                    )
                    for j in range(c)
                ],
                axis=1,
            )
            pick = torch.from_numpy(np.nan_to_num(per, nan=-1.0).argmax(axis=1)).to(emb.device)
        chosen = low[rows, pick][:, None]
        pred = logits_to_original(chosen, cfg.image_size, input_hw, original_hw) > 0
        out[:, it] = mask_iou(pred, gt_metric)
        if it < cfg.refine_iters:
            new_c, new_l = sample_disagreement_points(
                (chosen[:, 0] > 0) & valid_low,
                gt_low & valid_low,
                1,
                scale=cfg.image_size / grid,
                generator=gen,
            )
            coords = new_c if coords is None else torch.cat([coords, new_c], dim=1)
            labels = new_l if labels is None else torch.cat([labels, new_l], dim=1)
    return out


def evaluate(cfg: EvalConfig, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Evaluate every model of ``cfg`` on the same instances and prompts; writes and returns the report."""
    with num_threads(cfg.threads):
        return _evaluate(cfg, log)


@torch.no_grad()
def _evaluate(cfg: EvalConfig, log: Callable[[str], Any]) -> dict[str, Any]:
    from ..engine import torch_device

    device = torch.device(torch_device(cfg.device))
    s = cfg.image_size
    grid = 4 * (s // 16)
    ds = DistillDataset(cfg.data, s, seed=cfg.seed)
    models = {m.name: build_eval_model(m, s).to(device) for m in cfg.models}
    gens = {(n, p): torch.Generator().manual_seed(cfg.seed) for n in models for p in cfg.prompts}
    ious: dict[tuple[str, str], list[np.ndarray]] = {(n, p): [] for n in models for p in cfg.prompts}
    areas: list[float] = []
    t0 = time.perf_counter()
    n_images = 0
    for i in range(len(ds)):
        rec = ds.record(i)
        anns = rec.annotations
        if not anns:
            continue
        if cfg.max_instances_per_image:
            g = torch.Generator().manual_seed(i)
            sel = torch.randint(len(anns), (cfg.max_instances_per_image,), generator=g).tolist()
            anns = [anns[j] for j in sel]
        img, _ = ds.load_image(i)
        hw = (int(img.shape[0]), int(img.shape[1]))
        resized = transforms.resize_longest_side(img, s)
        input_hw = (int(resized.shape[0]), int(resized.shape[1]))
        x = torch.from_numpy(transforms.normalize_and_pad(resized, s)).to(device)
        valid_low = torch.zeros((s, s))
        valid_low[: input_hw[0], : input_hw[1]] = 1
        valid_low = (
            F.interpolate(valid_low[None, None], size=(grid, grid), mode="bilinear", align_corners=False)[
                0, 0
            ]
            > 0
        ).to(device)
        embs = {n: m.image_encoder(x) for n, m in models.items()}
        n_images += 1
        for c0 in range(0, len(anns), cfg.batch_prompts):
            chunk = anns[c0 : c0 + cfg.batch_prompts]
            masks = np.stack([decode_segmentation(a.segmentation, *hw) for a in chunk])
            keep = masks.reshape(len(chunk), -1).any(axis=1)
            chunk = [a for a, kk in zip(chunk, keep, strict=True) if kk]
            if not chunk:
                continue
            gt = torch.from_numpy(masks[keep])
            gt_low, gt_metric = gt_views(gt, s, input_hw, grid)
            gt_low, gt_metric = gt_low.to(device), gt_metric.to(device)
            boxes = torch.from_numpy(
                transforms.apply_boxes(np.asarray([a.box for a in chunk]), hw, s).reshape(-1, 4)
            ).to(device)
            centres = np.asarray([center_point(m) for m in masks[keep]])
            points = torch.from_numpy(transforms.apply_coords(centres, hw, s).reshape(-1, 2)).to(device)
            areas += [a.area for a in chunk]
            for name, model in models.items():
                emb = embs[name]
                for p in cfg.prompts:
                    ious[(name, p)].append(
                        _run_prompts(
                            model,
                            emb,
                            p,
                            boxes,
                            points,
                            gt_low,
                            gt_metric,
                            valid_low,
                            cfg,
                            input_hw,
                            hw,
                            gens[(name, p)],
                        )
                    )
        if (i + 1) % 50 == 0:
            log(f"eval: {i + 1}/{len(ds)} images ({time.perf_counter() - t0:.0f}s)")
    area_arr = np.asarray(areas)
    bins = np.asarray([size_bin(a) for a in area_arr]) if len(area_arr) else np.asarray([], dtype=str)
    labels = ["initial"] + [f"+{j} pt" for j in range(1, cfg.refine_iters + 1)]
    report: dict[str, Any] = {
        "data": {
            "format": cfg.data.format,
            "images": str(cfg.data.images),
            "annotations": str(cfg.data.annotations),
        },
        "image_size": s,
        "num_images": n_images,
        "num_instances": len(areas),
        "rounds": labels,
        "num_multimask_outputs": cfg.num_multimask_outputs,
        "select": cfg.select,
        "models": {},
    }
    for name in models:
        entry: dict[str, Any] = {}
        for p in cfg.prompts:
            arr = np.concatenate(ious[(name, p)]) if ious[(name, p)] else np.zeros((0, 1 + cfg.refine_iters))
            entry[p] = {
                "mIoU": [_finite(miou(arr[:, j])) for j in range(arr.shape[1])],
                "by_size": {
                    b: {
                        "count": int((bins == b).sum()),
                        "mIoU": [_finite(miou(arr[bins == b, j])) for j in range(arr.shape[1])],
                    }
                    for b, _, _ in SIZE_BINS
                },
            }
        report["models"][name] = entry
    names = list(models)
    if len(names) > 1:
        ref = names[0]
        report["comparison"] = {
            f"{n} - {ref}": {
                p: [
                    None if a is None or b is None else round(a - b, 4)
                    for a, b in zip(
                        report["models"][n][p]["mIoU"], report["models"][ref][p]["mIoU"], strict=True
                    )
                ]
                for p in cfg.prompts
            }
            for n in names[1:]
        }
    report["seconds"] = round(time.perf_counter() - t0, 2)
    out = Path(cfg.output)
    atomic_write_text(out, json.dumps(report, indent=2, allow_nan=False))
    return report
