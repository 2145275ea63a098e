"""Masks → Label Studio result regions: ``brushlabels`` (Label Studio RLE) and ``polygonlabels``."""

from __future__ import annotations

import secrets
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from ..runtime import transforms
from .config import ControlTag
from .rle import mask_to_rle


def region_id() -> str:
    return secrets.token_urlsafe(8)[:10]


def _base(control: ControlTag, to_name: str, mask_hw: tuple[int, int], rotation: int, score: float) -> dict:
    return {
        "id": region_id(),
        "from_name": control.name,
        "to_name": to_name,
        "type": control.type,
        "original_width": int(mask_hw[1]),
        "original_height": int(mask_hw[0]),
        "image_rotation": int(rotation),
        "score": round(float(score), 6),
        "readonly": False,
    }


def brush_region(
    mask: NDArray[np.bool_], control: ControlTag, to_name: str, label: str, score: float, rotation: int = 0
) -> dict[str, Any]:
    """One ``brushlabels`` region; the mask's shape is the image's (original_height, original_width)."""
    r = _base(control, to_name, mask.shape, rotation, score)
    r["value"] = {"format": "rle", "rle": mask_to_rle(mask), control.type: [label]}
    return r


def mask_polygons(mask: NDArray[np.bool_], tolerance: float = 1.0, min_area: float = 4.0) -> list[NDArray]:
    """Outer contours of ``mask`` as ``(K, 2)`` float arrays of pixel-corner (x, y) coordinates,
    simplified with Douglas-Peucker at ``tolerance`` pixels; tiny pieces (< ``min_area``) dropped."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    # pad so contours touching the border close properly; then shift back
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for c in contours:
        if cv2.contourArea(c) < min_area and len(c) < 3:
            continue
        if tolerance > 0:
            c = cv2.approxPolyDP(c, tolerance, True)
        pts = c.reshape(-1, 2).astype(np.float64) - 1.0 + 0.5  # undo the pad; pixel centres
        if len(pts) >= 3 and cv2.contourArea(pts.astype(np.float32)) >= min_area:
            out.append(pts)
    return out


def polygon_regions(
    mask: NDArray[np.bool_],
    control: ControlTag,
    to_name: str,
    label: str,
    score: float,
    rotation: int = 0,
    tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """One ``polygonlabels`` region per outer contour of ``mask`` (points in percent)."""
    h, w = mask.shape
    regions = []
    for pts in mask_polygons(mask, tolerance):
        pct = np.clip(transforms.pixels_to_percent(pts, w, h), 0.0, 100.0)
        r = _base(control, to_name, mask.shape, rotation, score)
        r["value"] = {
            "points": [[round(float(x), 4), round(float(y), 4)] for x, y in pct],
            "closed": True,
            control.type: [label],
        }
        regions.append(r)
    return regions


def mask_regions(
    mask: NDArray[np.bool_],
    outputs: list[ControlTag],
    to_name: str,
    label: str,
    score: float,
    rotation: int = 0,
    tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """The regions for one mask on every output control (a brush and/or polygons)."""
    regions: list[dict[str, Any]] = []
    for control in outputs:
        if control.type == "brushlabels":
            regions.append(brush_region(mask, control, to_name, label, score, rotation))
        else:
            regions.extend(polygon_regions(mask, control, to_name, label, score, rotation, tolerance))
    return regions
