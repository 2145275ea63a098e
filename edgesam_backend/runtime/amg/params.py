"""Argument checks of the automatic mask generator (SAM's parameter names and ranges)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def int_param(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum`` (bools rejected), else ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_param(name: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``[lo, hi)`` with ``hi_open``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (hi_open and v == hi):
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def check_image(image: Any) -> NDArray[np.uint8]:
    """An ``(H, W, 3)`` uint8 RGB image, non-empty, else ``ValueError``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image or an ImageEmbedding, got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image is empty")
    return image


def check_point_grids(grids: Any, crop_n_layers: int) -> list[NDArray[np.float64]]:
    """One ``(N, 2)`` grid of (x, y) in [0, 1] per crop layer (``crop_n_layers + 1`` grids)."""
    if isinstance(grids, np.ndarray) or not isinstance(grids, (list, tuple)):
        raise ValueError("point_grids must be a list with one (N, 2) array per crop layer")
    if len(grids) != crop_n_layers + 1:
        raise ValueError(
            f"point_grids needs one grid per crop layer ({crop_n_layers + 1} for "
            f"crop_n_layers={crop_n_layers}), got {len(grids)}"
        )
    out = []
    for i, g in enumerate(grids):
        a = np.asarray(g, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
            raise ValueError(f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {a.shape}")
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"point_grids[{i}] must hold (x, y) normalised to [0, 1]")
        out.append(a)
    return out


def check_boxes(
    boxes: ArrayLike, scores: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Box prompts ``(K, 4)`` XYXY original pixels (finite, ``x0 <= x1``, ``y0 <= y1``) and optional
    ``(K,)`` scores, as float64."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (K, 4) as XYXY pixels, got {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError("boxes must be finite")
    if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
        raise ValueError("boxes must be XYXY with x0 <= x1 and y0 <= y1")
    sc = None
    if scores is not None:
        sc = np.asarray(scores, dtype=np.float64).reshape(-1)
        if sc.shape[0] != b.shape[0]:
            raise ValueError(f"{b.shape[0]} boxes but {sc.shape[0]} scores")
    return b, sc
