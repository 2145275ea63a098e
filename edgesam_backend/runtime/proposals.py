"""Region proposals in numpy: decode the RPN's raw maps, NMS, and the granularity prior for points.

The encoder (ONNX or PyTorch with an ``rpn_head``) emits, next to the embeddings,
``proposal_logits (1, L)`` and ``proposal_ltrb (1, L, 4)`` over the P3..P6 locations of a
1024x1024 model input (row-major per level, P3 first). A location at level stride ``s``, row ``i``,
column ``j`` sits at ``((j + 0.5) s, (i + 0.5) s)`` in the model frame; its box is
``[cx - l, cy - t, cx + r, cy + b]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import transforms
from .boxes import nms

STRIDES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Proposals:
    """Class-agnostic boxes ``(K, 4)`` XYXY in the original image frame, scores ``(K,)`` sorted descending."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def top(self, k: int, nms_thresh: float | None = 0.7) -> Proposals:
        """The ``k`` best after (optional) NMS."""
        keep = nms(self.boxes, self.scores, nms_thresh) if nms_thresh is not None else np.arange(len(self))
        keep = keep[:k]
        return Proposals(self.boxes[keep], self.scores[keep])


def level_shapes(input_size: int = transforms.IMAGE_SIZE) -> list[tuple[int, int]]:
    """Feature-map sizes of P3..P6 for a square input (stride-2 convs round up)."""
    size = input_size
    for _ in range(2):
        size = (size + 1) // 2
    shapes = []
    for _ in range(4):
        size = (size + 1) // 2
        shapes.append((size, size))
    return shapes


def location_points(
    input_size: int = transforms.IMAGE_SIZE,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Centres ``(L, 2)`` (x, y) of all P3..P6 locations and their strides ``(L,)``."""
    pts, strides = [], []
    for (h, w), s in zip(level_shapes(input_size), STRIDES, strict=True):
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        pts.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
        strides.append(np.full(h * w, s))
    return np.concatenate(pts).astype(np.float32), np.concatenate(strides).astype(np.float32)


def decode_proposals(
    logits: ArrayLike,
    ltrb: ArrayLike,
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    *,
    score_thresh: float = 0.05,
    pre_nms_top_k: int = 1000,
    input_size: int = transforms.IMAGE_SIZE,
) -> Proposals:
    """Raw maps ``logits (1, L)`` / ``ltrb (1, L, 4)`` → proposals in the original frame (no NMS).

    Boxes are clipped to the un-padded input region before mapping back to original pixels.
    """
    lo = np.asarray(logits, dtype=np.float32).reshape(-1)
    d = np.asarray(ltrb, dtype=np.float32).reshape(-1, 4)
    pts, _ = location_points(input_size)
    if lo.shape[0] != pts.shape[0]:
        raise ValueError(
            f"expected {pts.shape[0]} proposal locations for a {input_size} input, got {lo.shape[0]}"
        )
    scores = 1.0 / (1.0 + np.exp(-lo))
    cand = np.flatnonzero(scores >= score_thresh)
    if cand.size > pre_nms_top_k:
        cand = cand[np.argpartition(-scores[cand], pre_nms_top_k - 1)[:pre_nms_top_k]]
    cand = cand[np.argsort(-scores[cand], kind="stable")]
    c, dd = pts[cand], d[cand]
    boxes = np.concatenate([c - dd[:, :2], c + dd[:, 2:]], axis=1)
    h, w = input_hw
    boxes = np.clip(boxes, 0, [w, h, w, h])
    valid = (boxes[:, 2] - boxes[:, 0] > 1) & (boxes[:, 3] - boxes[:, 1] > 1)
    boxes, sc = boxes[valid], scores[cand][valid]
    boxes = transforms.model_to_original_coords(boxes.reshape(-1, 2, 2), original_hw, input_size).reshape(
        -1, 4
    )
    return Proposals(boxes.astype(np.float32), sc.astype(np.float32))


def box_for_point(
    proposals: Proposals, point: ArrayLike, k: int = 5
) -> tuple[NDArray[np.float32] | None, float]:
    """EdgeSAM's granularity prior for a point prompt (official inference rule).

    Among proposals whose box strictly contains ``point`` (x, y), take the ``k`` with the nearest
    centres and return the highest-scoring box (original frame) and its score; ``(None, 0.0)`` when
    no proposal contains the point (the caller then uses the box-label extension: not-a-point tokens).
    """
    x, y = (float(v) for v in np.asarray(point, dtype=np.float64).reshape(2))
    b = proposals.boxes
    inside = (b[:, 0] < x) & (x < b[:, 2]) & (b[:, 1] < y) & (y < b[:, 3])
    idx = np.flatnonzero(inside)
    if idx.size == 0:
        return None, 0.0
    centres = (b[idx, :2] + b[idx, 2:]) / 2
    dist = np.hypot(centres[:, 0] - x, centres[:, 1] - y)
    near = idx[np.argsort(dist, kind="stable")[:k]]
    best = near[np.argmax(proposals.scores[near])]
    return proposals.boxes[best].copy(), float(proposals.scores[best])
