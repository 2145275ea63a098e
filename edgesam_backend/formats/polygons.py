"""Masks → polygons, with one pixel convention for every format (COCO, YOLO, Label Studio).

Frame: the continuous image plane in which pixel ``(c, r)`` covers ``[c, c+1) x [r, r+1)`` — the frame
of COCO's ``bbox``/polygons, of YOLO's normalised coordinates (times the image size) and of Label
Studio's percentages (times ``original_width``/``height``). A polygon's vertices are the **centres of
the mask's boundary pixels** (OpenCV's contour pixel indices + 0.5), so it runs half a pixel inside
the mask's outer edge; rasterised back (pycocotools, or any centre-sampling fill) it reproduces the
mask up to that half pixel, symmetrically on every side.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

#: Offset from OpenCV contour indices to pixel centres in the corner frame.
PIXEL_CENTRE = 0.5


def mask_polygons(
    mask: NDArray[np.bool_], tolerance: float = 1.0, min_area: float = 1.0, holes: bool = False
) -> list[NDArray[np.float64]]:
    """Contours of an ``(H, W)`` mask as ``(K, 2)`` float64 (x, y) polygons (frame and vertex rule in
    the module docstring), simplified with Douglas-Peucker at ``tolerance`` pixels (0: not simplified),
    pieces with fewer than 3 vertices or an area under ``min_area`` square pixels dropped, largest
    first. ``holes=False``: outer contours only; ``True``: hole contours too (COCO polygons are filled
    with even-odd, so holes drawn as separate polygons show as holes only in some readers)."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    # pad so contours touching the border close properly; the pad is undone below
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    mode = cv2.RETR_CCOMP if holes else cv2.RETR_EXTERNAL
    contours, _ = cv2.findContours(padded, mode, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if tolerance > 0:
            c = cv2.approxPolyDP(c, tolerance, True)
        if len(c) < 3:
            continue
        area = abs(cv2.contourArea(c.astype(np.float32)))
        if area < min_area:
            continue
        polys.append((area, c.reshape(-1, 2).astype(np.float64) - 1.0 + PIXEL_CENTRE))
    polys.sort(key=lambda t: -t[0])
    return [p for _, p in polys]


__all__ = ["PIXEL_CENTRE", "mask_polygons"]
