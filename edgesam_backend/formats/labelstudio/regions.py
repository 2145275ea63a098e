"""Label Studio result regions (the dicts inside ``predictions[].result``): brush, bitmask, polygon and
the tight rectangle of a mask.

Every region names its control (``from_name``, and ``type``, e.g. ``brushlabels``), the object tag it
annotates (``to_name``), the image's unrotated size (``original_width``/``original_height``) and the
``image_rotation`` it is shown with. Brush values are Label Studio RLE of an ``(H, W)`` mask; polygon
points are percent of the image size (corner frame, :mod:`..polygons` vertex rule). Bitmask values
(``<BitmaskLabels>``, Label Studio ≥ 1.21) are a PNG data URL of the image's size, as the editor's
own snapshot: black opaque pixels on the mask, transparent elsewhere. Rectangles are the mask's
tight box in percent (pixel-corner frame: a mask covering columns 10..19 spans x = 10..20 px).
"""

from __future__ import annotations

import base64
import io
import secrets
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..polygons import mask_polygons
from .coords import pixels_to_percent
from .rle import mask_to_rle


def region_id() -> str:
    """A random 10-character region id (Label Studio's own ids look alike)."""
    return secrets.token_urlsafe(8)[:10]


def region(
    *,
    from_name: str,
    to_name: str,
    type: str,
    value: dict[str, Any],
    width: int,
    height: int,
    score: float,
    rotation: int = 0,
    id: str | None = None,
    readonly: bool | None = None,
) -> dict[str, Any]:
    """One result region; ``id`` defaults to :func:`region_id`; ``score`` is stored as given (the caller
    rounds); ``readonly`` is written only when given."""
    r: dict[str, Any] = {
        "id": id if id is not None else region_id(),
        "from_name": from_name,
        "to_name": to_name,
        "type": type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": int(rotation),
        "score": score,
    }
    if readonly is not None:
        r["readonly"] = readonly
    r["value"] = value
    return r


def brush_value(rle: list[int], label: str, type: str = "brushlabels") -> dict[str, Any]:
    """A brush region's ``value``: Label Studio RLE (:mod:`.rle`) and its label."""
    return {"format": "rle", "rle": rle, type: [label]}


def brush_region_of_mask(mask: NDArray[np.bool_], *, label: str, **region_kw: Any) -> dict[str, Any]:
    """A brush region of an ``(H, W)`` mask (its shape is the image's size); ``region_kw`` as
    :func:`region` less ``value``/``width``/``height``."""
    kind = region_kw.pop("type", "brushlabels")
    h, w = mask.shape
    return region(
        type=kind, value=brush_value(mask_to_rle(mask), label, kind), width=w, height=h, **region_kw
    )


def bitmask_value(mask: NDArray[np.bool_], label: str, type: str = "bitmasklabels") -> dict[str, Any]:
    """A bitmask region's ``value``: an ``(H, W)`` mask as a PNG data URL (RGBA, alpha = mask)."""
    from PIL import Image

    h, w = mask.shape
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = mask.astype(np.uint8) * 255
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=False, compress_level=6)
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {"imageDataURL": url, type: [label]}


def bitmask_region_of_mask(mask: NDArray[np.bool_], *, label: str, **region_kw: Any) -> dict[str, Any]:
    """A ``bitmasklabels`` region of an ``(H, W)`` mask; ``region_kw`` as :func:`region`."""
    kind = region_kw.pop("type", "bitmasklabels")
    h, w = mask.shape
    return region(type=kind, value=bitmask_value(mask, label, kind), width=w, height=h, **region_kw)


def mask_box(mask: NDArray[np.bool_]) -> tuple[int, int, int, int] | None:
    """Tight pixel-corner box ``(x0, y0, x1, y1)`` of an ``(H, W)`` mask (exclusive x1/y1), None if empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if not cols.size:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def rectangle_region_of_mask(
    mask: NDArray[np.bool_], *, label: str, **region_kw: Any
) -> dict[str, Any] | None:
    """A ``rectanglelabels`` region with the tight box of an ``(H, W)`` mask in percent (None if empty)."""
    kind = region_kw.pop("type", "rectanglelabels")
    box = mask_box(mask)
    if box is None:
        return None
    h, w = mask.shape
    x0, y0, x1, y1 = box
    value = {
        "x": round(100.0 * x0 / w, 6),
        "y": round(100.0 * y0 / h, 6),
        "width": round(100.0 * (x1 - x0) / w, 6),
        "height": round(100.0 * (y1 - y0) / h, 6),
        "rotation": 0,
        kind: [label],
    }
    return region(type=kind, value=value, width=w, height=h, **region_kw)


def polygon_value(points_pct: NDArray[np.float64], label: str, type: str = "polygonlabels") -> dict[str, Any]:
    """A polygon region's ``value``: ``(K, 2)`` percent points (4 decimals), closed."""
    return {
        "points": [[round(float(x), 4), round(float(y), 4)] for x, y in points_pct],
        "closed": True,
        type: [label],
    }


def polygon_regions_of_mask(
    mask: NDArray[np.bool_], *, label: str, tolerance: float = 1.0, min_area: float = 4.0, **region_kw: Any
) -> list[dict[str, Any]]:
    """One polygon region per outer contour of an ``(H, W)`` mask (largest first; Douglas-Peucker at
    ``tolerance`` pixels, pieces under ``min_area`` square pixels dropped), points in percent."""
    kind = region_kw.pop("type", "polygonlabels")
    h, w = mask.shape
    out = []
    for pts in mask_polygons(mask, tolerance, min_area=min_area):
        pct = np.clip(pixels_to_percent(pts, w, h), 0.0, 100.0)
        out.append(region(type=kind, value=polygon_value(pct, label, kind), width=w, height=h, **region_kw))
    return out


__all__ = [
    "bitmask_region_of_mask",
    "bitmask_value",
    "brush_region_of_mask",
    "brush_value",
    "mask_box",
    "polygon_regions_of_mask",
    "polygon_value",
    "rectangle_region_of_mask",
    "region",
    "region_id",
]
