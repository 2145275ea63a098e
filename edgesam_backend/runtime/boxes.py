"""Box utilities shared by the mask generator, the proposals and training: IoU matrix and greedy NMS."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def box_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """Pairwise IoU ``(N, M)`` of XYXY boxes ``(N, 4)`` and ``(M, 4)``; area ``(x1-x0)*(y1-y0)`` as in
    torchvision; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    wh = np.clip(
        np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None
    )
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: ArrayLike, scores: ArrayLike, iou_thresh: float) -> NDArray[np.int64]:
    """Greedy NMS (torchvision's ``nms`` semantics): visit boxes by descending score, drop every later
    box whose IoU with a kept one is ``> iou_thresh``. Returns kept indices, best first; equal scores
    keep input order. Each kept box costs one vectorised IoU row against the boxes still alive, so
    memory stays O(N)."""
    b = np.asarray(boxes, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {b.shape} and {s.shape}")
    order = np.argsort(-s, kind="stable")
    b = b[order]
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    keep: list[int] = []
    alive = np.arange(b.shape[0])
    while alive.size:
        i = int(alive[0])
        keep.append(i)
        rest = alive[1:]
        if not rest.size:
            break
        wh = np.clip(np.minimum(b[i, 2:], b[rest, 2:]) - np.maximum(b[i, :2], b[rest, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        alive = rest[iou <= iou_thresh]
    return order[np.asarray(keep, dtype=np.int64)]
