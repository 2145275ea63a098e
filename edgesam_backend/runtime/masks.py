"""Mask scores and selection on low-res logits (numpy)."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


def stability_score(
    logits: NDArray[np.float32], mask_threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> NDArray[np.float32]:
    """``count(logit > t + offset) / count(logit > t - offset)`` over the last two axes.

    ``(..., H, W)`` → ``(...)`` float32; integer counts, float32 division as in the official code;
    an empty union scores 0.
    """
    inter = np.count_nonzero(logits > (mask_threshold + offset), axis=(-2, -1))
    union = np.count_nonzero(logits > (mask_threshold - offset), axis=(-2, -1))
    return (inter.astype(np.float32) / np.maximum(union, 1).astype(np.float32)).astype(np.float32)


# --- mask utilities for automatic mask generation ---------------------------------------------------


def mask_iou(a: NDArray[np.bool_], b: NDArray[np.bool_], empty: float = float("nan")) -> NDArray[np.float64]:
    """IoU of bool masks ``(..., H, W)`` pairwise along the leading axes → ``(...)`` float64; ``empty``
    where both masks are empty (NaN: no evidence; 1.0: "both say nothing" agrees)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    inter = np.count_nonzero(a & b, axis=(-2, -1)).astype(np.float64)
    union = np.count_nonzero(a | b, axis=(-2, -1)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1.0), empty)


def batched_mask_to_box(masks: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Tight boxes of binary masks ``(..., H, W)`` → ``(..., 4)`` int64 XYXY with *inclusive* max
    indices (``x1`` is the last column that has a pixel), ``[0, 0, 0, 0]`` for empty masks — SAM's
    ``batched_mask_to_box``. One pass of ``any`` per axis, no per-mask loop."""
    m = np.asarray(masks)
    if m.ndim < 2:
        raise ValueError(f"expected masks of shape (..., H, W), got {m.shape}")
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    if m.size == 0:
        return np.zeros((*lead, 4), dtype=np.int64)
    flat = m.reshape(-1, h, w).astype(bool, copy=False)
    rows = flat.any(axis=2)  # (N, H): row has a pixel
    cols = flat.any(axis=1)  # (N, W)
    nonempty = rows.any(axis=1)
    top = rows.argmax(axis=1)
    bottom = h - 1 - rows[:, ::-1].argmax(axis=1)
    left = cols.argmax(axis=1)
    right = w - 1 - cols[:, ::-1].argmax(axis=1)
    out = np.stack([left, top, right, bottom], axis=1).astype(np.int64) * nonempty[:, None]
    return out.reshape(*lead, 4)


def remove_small_regions(
    mask: NDArray[np.bool_], area_thresh: float, mode: str
) -> tuple[NDArray[np.bool_], bool]:
    """SAM's ``remove_small_regions`` with OpenCV (8-connectivity).

    ``mode="holes"``: fill background components smaller than ``area_thresh`` (those touching the
    border included, as SAM does); ``mode="islands"``: drop foreground components smaller than
    ``area_thresh``, keeping the largest if all are small. Returns ``(mask, changed)``.
    """
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    m = np.asarray(mask, dtype=bool)
    correct_holes = mode == "holes"
    working = np.ascontiguousarray(m ^ correct_holes, dtype=np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]  # label 0 is the background of `working`
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return m, False
    lut = np.zeros(n_labels, dtype=bool)
    if correct_holes:
        lut[0] = True  # label 0 of `working` is the mask itself
        lut[small] = True
    else:
        lut[1:] = True
        lut[small] = False
        if not lut.any():
            lut[int(np.argmax(sizes)) + 1] = True
    return lut[regions], True


def mask_to_uncompressed_rle(mask: NDArray[np.bool_]) -> dict:
    """SAM's uncompressed RLE of an ``(H, W)`` mask: ``{"size": [H, W], "counts": [...]}``, run lengths
    in column-major order starting with a (possibly empty) run of zeros."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    flat = m.T.ravel()
    if flat.size == 0:
        return {"size": [h, w], "counts": [0]}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]]))
    if flat[0]:
        counts = np.concatenate([[0], counts])
    return {"size": [h, w], "counts": counts.astype(np.int64).tolist()}


def encode_rles(
    masks: NDArray[np.bool_],
    original_hw: tuple[int, int] | None = None,
    offset_xy: tuple[int, int] = (0, 0),
) -> list[dict]:
    """pycocotools (compressed) RLEs of ``(N, h, w)`` masks, each pasted at ``offset_xy`` into an
    ``original_hw`` canvas (un-cropping). One transposed copy into pycocotools' Fortran layout and one
    ``encode`` call for the whole batch."""
    m = np.asarray(masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"expected masks (N, H, W), got {m.shape}")
    n, h, w = m.shape
    big_h, big_w = original_hw if original_hw is not None else (h, w)
    x0, y0 = int(offset_xy[0]), int(offset_xy[1])
    if n == 0:
        return []
    if x0 < 0 or y0 < 0 or x0 + w > big_w or y0 + h > big_h:
        raise ValueError(f"masks {h}x{w} at {offset_xy} do not fit in {big_h}x{big_w}")
    buf = np.zeros((n, big_w, big_h), dtype=np.uint8)  # memory order of a Fortran (H, W, N) array
    buf[:, x0 : x0 + w, y0 : y0 + h] = m.transpose(0, 2, 1)
    return encode_rles_transposed(buf)


def encode_rles_transposed(masks_t: NDArray) -> list[dict]:
    """pycocotools RLEs of masks given transposed, ``(N, W, H)`` C-contiguous (bool or uint8): exactly
    pycocotools' Fortran ``(H, W, N)`` layout, so ``encode`` runs on a view without any copy."""
    from pycocotools import mask as mask_utils

    m = np.ascontiguousarray(masks_t)
    if m.ndim != 3:
        raise ValueError(f"expected transposed masks (N, W, H), got {m.shape}")
    if m.shape[0] == 0:
        return []
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    elif m.dtype != np.uint8:
        m = m.astype(np.uint8)
    return mask_utils.encode(m.transpose(2, 1, 0))


def decode_rles(rles: list[dict]) -> NDArray[np.bool_]:
    """pycocotools RLEs (all the same size) → ``(N, H, W)`` bool, C-ordered."""
    from pycocotools import mask as mask_utils

    if not rles:
        raise ValueError("decode_rles needs at least one RLE")
    dec = mask_utils.decode(list(rles))  # (H, W, N) Fortran order
    return np.ascontiguousarray(dec.transpose(2, 0, 1)).view(bool)


def center_point(mask: NDArray[np.bool_]) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from the background (exact Euclidean distance transform;
    ties → first in raster order). The image border is not background, as in the official kornia code."""
    m = np.ascontiguousarray(np.asarray(mask, dtype=np.uint8))
    if not m.any():
        raise ValueError("center_point of an empty mask")
    dist = cv2.distanceTransform(m, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(x), float(y)
