"""Prompt rules shared by distillation and evaluation.

* :func:`subsample_prompts`: at most ``max_prompts`` instances per image, drawn uniformly **with
  replacement** when there are more (``torch.randint``), all of them otherwise.
* :func:`sample_disagreement_points`: prompt-in-the-loop / refinement points. Against a reference
  (the teacher's mask in training, the ground truth in evaluation): pixels where the prediction is
  foreground and the reference background (false positives) give a **negative** point (label 0),
  the reverse (false negatives) a **positive** one (label 1), drawn uniformly from the union; fewer than
  ``min_pixels_per_point * n_points`` disagreeing pixels give the dummy point (0, 0) with label -2
  (a zero token). Grid pixels ``(col, row)`` are scaled to the model frame by ``scale`` (1024/256 = 4).
* :func:`select_by_iou`: with several output tokens, the mask of the teacher's highest IoU prediction.
* the centre click (:func:`edgesam_backend.runtime.masks.center_point`) lives in the runtime (torch-free).
* :func:`correction_click` / :func:`correction_clicks`: the fine-tuning / evaluation click, placed
  like an annotator would: in the larger error region, at its pixel farthest from the region's
  boundary (argmax of the exact Euclidean distance transform; the image border counts as boundary,
  ties → first in raster order). A false-negative region gives a positive click (label 1), a
  false-positive one a negative click (label 0); no error → the dummy point (label -2).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

DUMMY_LABEL = -2


def subsample_prompts(num: int, max_prompts: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the prompts used for an image with ``num`` instances."""
    if num > max_prompts:
        return torch.randint(num, (max_prompts,), generator=generator)
    return torch.arange(num)


def sample_disagreement_points(
    pred: torch.Tensor,
    ref: torch.Tensor,
    n_points: int = 1,
    *,
    scale: float = 4.0,
    min_pixels_per_point: int = 10,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pred``, ``ref``: ``(N, H, W)`` bool (prediction, reference) → ``coords (N, n_points, 2)``
    float (x, y) in the model frame and ``labels (N, n_points)`` int64 (1 FN, 0 FP, -2 dummy)."""
    pred = pred.bool()
    ref = ref.bool()
    n, _, w = pred.shape
    fn = ref & ~pred
    err = (pred ^ ref).reshape(n, -1)
    count = err.sum(dim=1)
    enough = count >= min_pixels_per_point * n_points
    weights = err.float()
    weights[~enough] = 1.0  # placeholder draw, replaced by the dummy point below
    weights = weights.cpu()
    idx = torch.multinomial(weights, n_points, replacement=False, generator=generator).to(pred.device)
    ys, xs = idx // w, idx % w
    labels = torch.gather(fn.reshape(n, -1), 1, idx).long()
    coords = torch.stack([xs, ys], dim=-1).float() * scale
    coords[~enough] = 0.0
    labels[~enough] = DUMMY_LABEL
    return coords, labels


def select_by_iou(iou: torch.Tensor, *masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``iou (N, C)``, masks ``(N, C, H, W)`` → each mask's ``(N, H, W)`` at ``argmax(iou)`` per row."""
    k = iou.argmax(dim=1)
    rows = torch.arange(iou.shape[0], device=iou.device)
    return tuple(m[rows, k] for m in masks)


def correction_click(pred: NDArray[np.bool_], gt: NDArray[np.bool_]) -> tuple[float, float, int]:
    """``pred``, ``gt`` ``(H, W)`` bool → ``(x, y, label)`` in their pixel grid: the deepest point of
    the false negatives (label 1) or of the false positives (label 0), whichever reaches deeper (FN
    on a tie); ``(0, 0, -2)`` when they agree everywhere."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    best: tuple[float, float, float, int] = (0.0, 0.0, 0.0, DUMMY_LABEL)
    for region, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not region.any():
            continue
        padded = np.pad(region.astype(np.uint8), 1)  # the border is background: clicks stay inside
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        j = int(np.argmax(dist))
        depth = float(dist.flat[j])
        if depth > best[2]:
            y, x = divmod(j, region.shape[1])
            best = (float(x), float(y), depth, label)
    return best[0], best[1], best[3]


def correction_clicks(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched :func:`correction_click`: ``pred``, ``gt`` ``(N, H, W)`` bool → ``coords (N, 1, 2)``
    float (x, y) in that grid and ``labels (N, 1)`` int64, on ``pred``'s device."""
    p = pred.detach().bool().cpu().numpy()
    g = gt.detach().bool().cpu().numpy()
    clicks = [correction_click(a, b) for a, b in zip(p, g, strict=True)]
    coords = torch.tensor([[c[0], c[1]] for c in clicks], dtype=torch.float32).reshape(-1, 1, 2)
    labels = torch.tensor([c[2] for c in clicks], dtype=torch.long).reshape(-1, 1)
    return coords.to(pred.device), labels.to(pred.device)
