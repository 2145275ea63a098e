"""Label Studio geometry: percent ↔ pixels, ``image_rotation``, rectangles → XYXY boxes.

Label Studio gives region coordinates in percent (0-100) of ``original_width``/``original_height``,
in the corner frame (pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)``). They are converted to *float*
pixels (``x / 100 * width``), never rounded: the predictor takes sub-pixel prompts, and keeping the
float is what makes the backend's mask identical to a direct ``predict`` call with the same numbers.
Rotations are clockwise degrees, as Label Studio's ``image_rotation`` (a view rotated by 90 shows the
original's left edge at the top). Each value is converted once: percent → pixels in the frame it is
used in, never back and forth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray


def percent_to_pixels(points_pct: ArrayLike, width: float, height: float) -> NDArray[np.float64]:
    """(x, y) in percent ``(..., 2)`` of a ``width`` x ``height`` frame → float pixels (not rounded)."""
    p = np.array(points_pct, dtype=np.float64, copy=True)
    if p.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    p[..., 0] = p[..., 0] / 100.0 * float(width)
    p[..., 1] = p[..., 1] / 100.0 * float(height)
    return p


def pixels_to_percent(points_px: ArrayLike, width: float, height: float) -> NDArray[np.float64]:
    """Inverse of :func:`percent_to_pixels`: float pixels ``(..., 2)`` → percent of the frame."""
    p = np.array(points_px, dtype=np.float64, copy=True)
    if p.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2), got {p.shape}")
    p[..., 0] = p[..., 0] * 100.0 / float(width)
    p[..., 1] = p[..., 1] * 100.0 / float(height)
    return p


def normalize_rotation(degrees: float | None) -> int:
    """``image_rotation`` → one of 0/90/180/270 (clockwise); other angles raise ``ValueError``."""
    d = 0.0 if degrees is None else float(degrees)
    if not np.isfinite(d) or d % 90:
        raise ValueError(f"image rotation must be a multiple of 90 degrees, got {degrees!r}")
    return int(d % 360)


def rotate_points(points: ArrayLike, width: float, height: float, rotation: int) -> NDArray[np.float64]:
    """(x, y) ``(..., 2)`` in an unrotated ``width`` x ``height`` frame → the view rotated clockwise
    by ``rotation`` (continuous coordinates, consistent with :func:`rotate_mask`)."""
    r = normalize_rotation(rotation)
    p = np.asarray(points, dtype=np.float64)
    x, y = p[..., 0], p[..., 1]
    if r == 0:
        out = (x, y)
    elif r == 90:
        out = (height - y, x)
    elif r == 180:
        out = (width - x, height - y)
    else:
        out = (y, width - x)
    return np.stack(out, axis=-1)


def unrotate_points(points: ArrayLike, width: float, height: float, rotation: int) -> NDArray[np.float64]:
    """Inverse of :func:`rotate_points`: points in the rotated view → the unrotated ``width`` x
    ``height`` frame (``width``/``height`` are the *unrotated* image's)."""
    r = normalize_rotation(rotation)
    p = np.asarray(points, dtype=np.float64)
    xr, yr = p[..., 0], p[..., 1]
    if r == 0:
        out = (xr, yr)
    elif r == 90:
        out = (yr, height - xr)
    elif r == 180:
        out = (width - xr, height - yr)
    else:
        out = (width - yr, xr)
    return np.stack(out, axis=-1)


def rotate_mask(mask: NDArray, rotation: int) -> NDArray:
    """An ``(H, W)`` mask as seen rotated clockwise by ``rotation`` (a contiguous copy; ``(W, H)`` for
    90/270)."""
    return np.ascontiguousarray(np.rot90(mask, k=-(normalize_rotation(rotation) // 90)))


@dataclass(frozen=True)
class Rectangle:
    """A rectangle region's ``value``: top-left ``x``, ``y`` and ``width``, ``height`` in percent of the
    frame, turned clockwise (on screen, y down) by ``rotation`` degrees about its top-left corner."""

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Rectangle:
        """From a result's ``value`` dict (``width``/``height``/``rotation`` default to 0)."""
        return cls(
            float(value["x"]),
            float(value["y"]),
            float(value.get("width", 0.0) or 0.0),
            float(value.get("height", 0.0) or 0.0),
            float(value.get("rotation", 0.0) or 0.0),
        )

    def to_box(self, frame_width: float, frame_height: float) -> NDArray[np.float64]:
        """``(4,)`` XYXY float pixels of the axis-aligned bounds in a ``frame_width`` x ``frame_height``
        frame, clipped to it. Unrotated: the corners ``(x, y)`` and ``(x + width, y + height)`` go
        percent → pixels directly; rotated: the four corners are turned in pixel space (a percent
        square is not square in pixels)."""
        w, h = float(frame_width), float(frame_height)
        if self.rotation % 360 == 0:
            corners = percent_to_pixels([[self.x, self.y], [self.x + self.width, self.y + self.height]], w, h)
        else:
            x0, y0 = self.x / 100.0 * w, self.y / 100.0 * h
            ww, hh = self.width / 100.0 * w, self.height / 100.0 * h
            a = math.radians(self.rotation)
            local = np.array([[0.0, 0.0], [ww, 0.0], [ww, hh], [0.0, hh]], dtype=np.float64)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            corners = local @ rot.T + np.array([x0, y0])
        lo = np.clip(corners.min(axis=0), 0.0, [w, h])
        hi = np.clip(corners.max(axis=0), 0.0, [w, h])
        return np.concatenate([lo, hi])


__all__ = [
    "Rectangle",
    "normalize_rotation",
    "percent_to_pixels",
    "pixels_to_percent",
    "rotate_mask",
    "rotate_points",
    "unrotate_points",
]
