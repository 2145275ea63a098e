"""COCO-RLE mask helpers for the pipeline (pycocotools + OpenCV): encode/decode, boxes, mask NMS,
smoothing (polygons: :mod:`edgesam_backend.formats.polygons`)."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray
from pycocotools import mask as mask_utils

from ..runtime.boxes import nms
from ..runtime.quality import rle_boxes


def rle_encode(mask: NDArray[np.bool_]) -> dict[str, Any]:
    """``(H, W)`` bool → COCO RLE with a ``str`` ``counts`` (JSON-ready)."""
    m = np.asfortranarray(np.asarray(mask, dtype=np.uint8))
    rle = mask_utils.encode(m)
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def as_json_rle(rle: dict[str, Any]) -> dict[str, Any]:
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def rle_decode(rle: dict[str, Any]) -> NDArray[np.bool_]:
    """COCO RLE → ``(H, W)`` bool (C order)."""
    return np.ascontiguousarray(mask_utils.decode(rle)).astype(bool)


def rle_area(rle: dict[str, Any]) -> int:
    return int(mask_utils.area(rle))


def rle_bbox(rle: dict[str, Any]) -> list[float]:
    """COCO XYWH box of an RLE (pycocotools' ``toBbox``: ``w = x_max - x_min + 1``)."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def mask_nms(rles: list[dict[str, Any]], scores: ArrayLike, iou_thresh: float) -> NDArray[np.int64]:
    """Greedy NMS on mask IoU (pycocotools ``iou``): kept indices, best first; ties keep input order."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(rles)
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-s, kind="stable")
    ordered = [rles[i] for i in order]
    iou = np.asarray(mask_utils.iou(ordered, ordered, [0] * n), dtype=np.float64).reshape(n, n)
    alive = np.ones(n, dtype=bool)
    keep = []
    for i in range(n):
        if not alive[i]:
            continue
        keep.append(i)
        alive &= ~(iou[i] > iou_thresh)
        alive[i] = False
    return order[np.asarray(keep, dtype=np.int64)]


def box_nms(rles: list[dict[str, Any]], scores: ArrayLike, iou_thresh: float) -> NDArray[np.int64]:
    """Greedy NMS on the masks' tight boxes: the automatic mask generator's NMS, on boxes in its
    convention (inclusive max, :func:`~edgesam_backend.runtime.quality.rle_boxes`)."""
    if not rles:
        return np.zeros(0, np.int64)
    return nms(rle_boxes(rles), np.asarray(scores, dtype=np.float64), iou_thresh)


def smooth_mask(mask: NDArray[np.bool_], kernel: int) -> NDArray[np.bool_]:
    """Gaussian-smooth a binary mask's outline: blur with a ``kernel`` x ``kernel`` Gaussian, keep > 0.5."""
    if kernel < 3:
        return mask
    k = kernel if kernel % 2 else kernel + 1
    blurred = cv2.GaussianBlur(np.asarray(mask, dtype=np.float32), (k, k), 0)
    return blurred > 0.5


__all__ = [
    "as_json_rle",
    "box_nms",
    "mask_nms",
    "rle_area",
    "rle_bbox",
    "rle_decode",
    "rle_encode",
    "smooth_mask",
]
