"""Label Studio annotation results → instance masks (the reverse of :mod:`.regions`).

One place reads masks out of a Label Studio annotation, for fine-tuning (``edgesam finetune`` with
``format: labelstudio``) and for the backend's fit on a project (:mod:`...labelstudio.fit`):
``brushlabels`` with ``format: rle`` are decoded with :mod:`.rle`; ``polygonlabels`` (points in percent
of the image) become a COCO polygon in pixels (rasterised by pycocotools, as every COCO polygon here).
Other result types carry no mask and are skipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..coco import decode_segmentation
from .rle import rle_to_mask

MASK_TYPES = ("brushlabels", "polygonlabels")


def result_segmentation(res: dict[str, Any]) -> tuple[NDArray[np.bool_] | list[list[float]], int, int] | None:
    """A brush result → its ``(H, W)`` bool mask; a polygon → a COCO polygon (pixels, original frame);
    with ``(H, W)`` = the result's ``original_height/width``. None for results without a mask."""
    kind = res.get("type")
    value = res.get("value") or {}
    if kind not in MASK_TYPES or "original_height" not in res or "original_width" not in res:
        return None
    h, w = int(res["original_height"]), int(res["original_width"])
    if kind == "brushlabels" and value.get("format") == "rle" and value.get("rle"):
        return rle_to_mask(value["rle"], h, w) > 127, h, w
    if kind == "polygonlabels" and value.get("points"):
        pts = np.asarray(value["points"], np.float64).reshape(-1, 2) * np.array([w, h]) / 100.0
        return [pts.reshape(-1).tolist()], h, w
    return None


def result_mask(res: dict[str, Any]) -> NDArray[np.bool_] | None:
    """The ``(original_height, original_width)`` bool mask of a brush/polygon result, else None."""
    seg = result_segmentation(res)
    if seg is None:
        return None
    m, h, w = seg
    return m if isinstance(m, np.ndarray) else decode_segmentation(m, h, w)


def first_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's first annotation that was not cancelled (what training learns from), or None."""
    for ann in task.get("annotations") or []:
        if isinstance(ann, dict) and not ann.get("was_cancelled"):
            return ann
    return None


def task_masks(task: dict[str, Any]) -> list[NDArray[np.bool_]]:
    """Non-empty instance masks of a task's first annotation that was not cancelled (original frame)."""
    ann = first_annotation(task)
    out = []
    for res in (ann or {}).get("result") or []:
        m = result_mask(res) if isinstance(res, dict) else None
        if m is not None and m.any():
            out.append(m)
    return out
