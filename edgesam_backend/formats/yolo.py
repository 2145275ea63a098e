"""Ultralytics YOLO-seg label lines: ``class x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1].

Normalised coordinates are the corner frame of :mod:`.polygons` divided by the image size (``x / W``,
``y / H``), so a polygon from :func:`~.polygons.mask_polygons` maps over unchanged.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray


def pixels_to_normalized(points: ArrayLike, width: float, height: float) -> NDArray[np.float64]:
    """(x, y) pixels ``(..., 2)`` → fractions of the image size in [0, 1] (YOLO's frame), clipped."""
    p = np.array(points, dtype=np.float64, copy=True)
    if p.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    p[..., 0] = np.clip(p[..., 0] / float(width), 0.0, 1.0)
    p[..., 1] = np.clip(p[..., 1] / float(height), 0.0, 1.0)
    return p


def polygon_line(cls: int, polygon_px: ArrayLike, width: float, height: float) -> str:
    """One label line for a ``(K, 2)`` pixel polygon of class index ``cls`` (6 decimals)."""
    pts = pixels_to_normalized(polygon_px, width, height)
    return f"{int(cls)} " + " ".join(f"{v:.6f}" for v in pts.reshape(-1))


def validate_yolo_text(text: str, num_classes: int) -> int:
    """Check YOLO-seg lines (class range, >= 3 points, coordinates in [0, 1]); returns the number of
    instances; ``ValueError`` names the first bad line."""
    n = 0
    for i, line in enumerate(text.splitlines()):
        parts = line.split()
        if not parts:
            continue
        cls = int(parts[0])
        coords = [float(v) for v in parts[1:]]
        if not 0 <= cls < num_classes:
            raise ValueError(f"line {i + 1}: class {cls} outside 0..{num_classes - 1}")
        if len(coords) < 6 or len(coords) % 2:
            raise ValueError(f"line {i + 1}: a polygon needs an even number (>= 6) of coordinates")
        if any(not 0.0 <= v <= 1.0 for v in coords):
            raise ValueError(f"line {i + 1}: coordinates must be normalised to [0, 1]")
        n += 1
    return n


__all__ = ["pixels_to_normalized", "polygon_line", "validate_yolo_text"]
