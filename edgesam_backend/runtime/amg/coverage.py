"""Coverage-driven prompting for everything mode: decoder prompts only where masks are still missing.

Hierarchical point sampling in the spirit of TinySAM's strategy, built on SAM's point grid so that it
works with any checkpoint:

* the ``n x n`` grid of a crop (SAM's ``build_point_grid``, index ``row * n + col``) is split into
  **nested levels**: level 0 keeps every ``2**(L-1)``-th row and column, each next level halves the
  stride, the last level is the full grid; a level's points are the ones no coarser level had. Every
  grid point belongs to exactly one level, so an image on which nothing is ever accepted is prompted
  with exactly the grid's points (never more);
* before a level is decoded, its points that fall on the **coverage map** are dropped: the union of
  the accepted masks of all earlier levels (and of the proposal boxes, when the model has a region
  proposal head and they are used), kept on the decoder's ``256 x 256`` low-res frame of the crop
  (model frame / 4), so nothing is upscaled for it;
* a mask is **accepted** into the coverage map when it passes the generator's quality filter and its
  stability score is at least ``coverage_stability_thresh`` (stability-based acceptance; with
  ``quality_score="iou"`` the IoU filter applies too);
* an optional **budget** caps the decoder prompts per image: a level with more uncovered points than
  the budget has left is thinned to an evenly spread subset (in grid order).

Coverage is updated once per level, never within one, so results do not depend on ``points_per_batch``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from .. import transforms
from ..decode import Decoded
from ..quality import quality_keep

#: ``strategy=`` values of :class:`~edgesam_backend.runtime.amg.AutomaticMaskGenerator`.
STRATEGIES = ("grid", "coverage")


def grid_side(points: NDArray[np.float64]) -> int:
    """Points per side of a square SAM grid ``(n*n, 2)``; ``ValueError`` when it is not square."""
    n = round(math.sqrt(points.shape[0]))
    if n * n != points.shape[0]:
        raise ValueError(f"coverage needs a square point grid, got {points.shape[0]} points")
    return n


def nested_levels(n: int, levels: int) -> list[NDArray[np.int64]]:
    """Split the ``n x n`` grid (index ``row * n + col``) into ``levels`` nested levels.

    Level ``l`` (``0 .. levels-1``) has stride ``s = 2**(levels-1-l)`` and offset ``(s0 // 2) % s``
    (``s0`` the coarsest stride, so level 0 sits near the cell centres and every level contains the
    coarser ones); each returned array holds only the indices new at that level, in grid order.
    Together they are ``arange(n*n)`` exactly once. Empty levels are kept (as empty arrays).
    """
    if levels < 1:
        raise ValueError(f"coverage levels must be >= 1, got {levels}")
    s0 = 2 ** (levels - 1)
    rows, cols = np.divmod(np.arange(n * n, dtype=np.int64), n)
    seen = np.zeros(n * n, dtype=bool)
    out = []
    for lvl in range(levels):
        s = 2 ** (levels - 1 - lvl)
        off = (s0 // 2) % s
        on = (rows % s == off) & (cols % s == off) & ~seen
        out.append(np.flatnonzero(on))
        seen |= on
    return out


def spread(idx: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """At most ``k`` of ``idx``, evenly spread over it (order kept); all of it when it fits."""
    if k <= 0:
        return idx[:0]
    if idx.size <= k:
        return idx
    return idx[np.round(np.linspace(0, idx.size - 1, k)).astype(np.int64)]


class CoverageMap:
    """Union of accepted masks of one crop on the decoder's low-res frame.

    ``covered`` is ``(S, S)`` bool in the frame of ``low_res_logits`` (``S`` = 256 for a 1024 model
    input: the model frame / 4; taken from the first masks added, so any model input size works). A
    point ``(x, y)`` of the crop (original pixels) maps to cell ``floor(apply_coords(x, y) / 4)``.
    Before anything is added nothing is covered.
    """

    def __init__(self, crop_hw: tuple[int, int]) -> None:
        self.crop_hw = (int(crop_hw[0]), int(crop_hw[1]))
        self.covered: NDArray[np.bool_] | None = None

    @property
    def size(self) -> int:
        return 0 if self.covered is None else int(self.covered.shape[0])

    def add(self, low_res: NDArray[np.float32]) -> None:
        """OR masks ``logits > 0`` into the map; ``low_res`` ``(S, S)`` or ``(n, S, S)``."""
        low = np.asarray(low_res)
        if low.size == 0:
            return
        if self.covered is None:
            self.covered = np.zeros(low.shape[-2:], dtype=bool)
        for m in low.reshape(-1, *low.shape[-2:]):
            self.covered |= m > 0

    def cells(self, points: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Crop-frame ``(N, 2)`` (x, y) pixels → ``(rows, cols)`` low-res cells, clipped to the map."""
        s = self.size
        model = transforms.apply_coords(points, self.crop_hw, long_side=4 * s).astype(np.float64)
        cols = np.clip(np.floor(model[:, 0] / 4), 0, s - 1).astype(np.int64)
        rows = np.clip(np.floor(model[:, 1] / 4), 0, s - 1).astype(np.int64)
        return rows, cols

    def is_covered(self, points: NDArray[np.float64]) -> NDArray[np.bool_]:
        """``(N,)`` bool: which crop-frame points ``(N, 2)`` lie on an accepted mask."""
        if self.covered is None or points.shape[0] == 0:
            return np.zeros(points.shape[0], dtype=bool)
        rows, cols = self.cells(points)
        return self.covered[rows, cols]

    def fraction(self) -> float:
        """Covered share of the crop's valid low-res cells (padding excluded)."""
        if self.covered is None:
            return 0.0
        h, w = self.crop_hw
        long = max(h, w)
        vh = max(1, round(self.size * h / long))
        vw = max(1, round(self.size * w / long))
        return float(self.covered[:vh, :vw].mean())


def accepted(
    d: Decoded,
    quality_score: str,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    coverage_stability_thresh: float,
) -> NDArray[np.bool_]:
    """``(B, K)`` bool: masks of ``d`` that pass the quality filter and have stability ``>=
    coverage_stability_thresh`` (they cover their area for later levels)."""
    stab = d.stability_scores
    keep = quality_keep(d.iou_predictions, stab, quality_score, pred_iou_thresh, stability_score_thresh)
    return keep & (stab >= coverage_stability_thresh)


def uncovered(points: NDArray[np.float64], idx: NDArray[np.int64], cov: CoverageMap) -> NDArray[np.int64]:
    """The indices of ``idx`` whose points (``points[idx]``, crop frame) the map does not cover."""
    if idx.size == 0:
        return idx
    return idx[~cov.is_covered(points[idx])]


__all__ = ["STRATEGIES", "CoverageMap", "accepted", "grid_side", "nested_levels", "spread", "uncovered"]
