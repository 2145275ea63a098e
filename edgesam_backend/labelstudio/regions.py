"""A mask → the backend's result regions on every output control of the labeling config (brush,
bitmask, polygons, tight rectangle, in any combination); the region dicts themselves are
:mod:`edgesam_backend.formats.labelstudio.regions`."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..formats.labelstudio.regions import (
    bitmask_region_of_mask,
    brush_region_of_mask,
    polygon_regions_of_mask,
    rectangle_region_of_mask,
)
from .config import ControlTag


def mask_regions(
    mask: NDArray[np.bool_],
    outputs: list[ControlTag],
    to_name: str,
    label: str,
    score: float,
    rotation: int = 0,
    tolerance: float = 1.0,
) -> list[dict[str, Any]]:
    """The regions for one ``(H, W)`` mask (the image's unrotated size) on every output control:
    random ids, ``score`` rounded to 6 decimals, ``readonly: false``."""
    common = {"to_name": to_name, "label": label, "score": round(float(score), 6), "rotation": int(rotation)}
    regions: list[dict[str, Any]] = []
    for control in outputs:
        kw = {**common, "from_name": control.name, "type": control.type, "readonly": False}
        if control.type == "brushlabels":
            regions.append(brush_region_of_mask(mask, **kw))
        elif control.type == "bitmasklabels":
            regions.append(bitmask_region_of_mask(mask, **kw))
        elif control.type == "rectanglelabels":
            rect = rectangle_region_of_mask(mask, **kw)
            if rect is not None:
                regions.append(rect)
        else:
            regions.extend(polygon_regions_of_mask(mask, tolerance=tolerance, **kw))
    return regions
