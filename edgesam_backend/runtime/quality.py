"""The quality filter and small-region removal, shared by the automatic mask generator and the
pipeline's ``refine`` step (one rule, one set of defaults).

Quality filter (SAM's, with EdgeSAM's choice of score): keep ``stability >= stability_score_thresh``
and, only when ranking by predicted IoU (``quality_score="iou"``), ``predicted_iou > pred_iou_thresh``;
a threshold of 0 (or ``None``) disables its test. EdgeSAM did not distil SAM's IoU head, so with the
default ``quality_score="stability"`` the IoU threshold is ignored.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .masks import remove_small_regions

#: SAM's automatic-mask-generator defaults (also the pipeline's grid-mode defaults).
PRED_IOU_THRESH = 0.88
STABILITY_SCORE_THRESH = 0.95
BOX_NMS_THRESH = 0.7
QUALITY_SCORES = ("stability", "iou")


def quality_keep(
    iou: ArrayLike,
    stability: ArrayLike,
    quality_score: str,
    pred_iou_thresh: float | None,
    stability_score_thresh: float | None,
) -> NDArray[np.bool_]:
    """``(N,)`` bool: which masks pass the quality filter (see module docs). ``iou``/``stability``:
    ``(N,)`` scores of the kept tokens."""
    if quality_score not in QUALITY_SCORES:
        raise ValueError(f"quality_score must be one of {QUALITY_SCORES}, got {quality_score!r}")
    iou = np.asarray(iou)
    stability = np.asarray(stability)
    keep = np.ones(stability.shape, dtype=bool)
    if quality_score == "iou" and pred_iou_thresh:
        keep &= iou > pred_iou_thresh
    if stability_score_thresh:
        keep &= stability >= stability_score_thresh
    return keep


def clean_mask(mask: NDArray[np.bool_], min_area: int) -> tuple[NDArray[np.bool_], bool]:
    """Fill holes, then remove islands, smaller than ``min_area`` pixels (SAM's two passes of
    ``remove_small_regions``). ``(H, W)`` bool → ``(mask, changed)``."""
    mask, changed_holes = remove_small_regions(mask, min_area, "holes")
    mask, changed_islands = remove_small_regions(mask, min_area, "islands")
    return mask, changed_holes or changed_islands


def cleaned_rles(rles: list[dict], min_area: int) -> Iterator[tuple[int, NDArray[np.bool_]]]:
    """For each pycocotools RLE that :func:`clean_mask` changes: ``(index, cleaned (H, W) bool mask)``;
    unchanged masks yield nothing (the caller keeps their RLE as it is)."""
    from pycocotools import mask as mask_utils

    for i, rle in enumerate(rles):
        mask, changed = clean_mask(mask_utils.decode(rle).astype(bool), min_area)
        if changed:
            yield i, mask


def rle_boxes(rles: list[dict]) -> NDArray[np.int64]:
    """``(K, 4)`` int64 XYXY tight boxes of RLEs in the generator's convention (SAM's
    ``batched_mask_to_box``: *inclusive* max indices, ``[0, 0, 0, 0]`` for an empty mask)."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, 4), np.int64)
    xywh = np.stack([np.asarray(mask_utils.toBbox(r), dtype=np.float64) for r in rles]).astype(np.int64)
    out = xywh.copy()
    out[:, 2:] = xywh[:, :2] + xywh[:, 2:] - 1
    out[(xywh[:, 2] == 0) | (xywh[:, 3] == 0)] = 0
    return out


__all__ = [
    "BOX_NMS_THRESH",
    "PRED_IOU_THRESH",
    "QUALITY_SCORES",
    "STABILITY_SCORE_THRESH",
    "clean_mask",
    "cleaned_rles",
    "quality_keep",
    "rle_boxes",
]
