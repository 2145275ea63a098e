"""Candidate masks between the generator's stages: RLEs plus per-mask boxes, scores and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..boxes import nms
from ..masks import batched_mask_to_box, encode_rles
from ..quality import cleaned_rles


@dataclass
class Candidates:
    """Masks kept so far (all in the original image frame).

    Attributes:
        rles: pycocotools RLEs (``bytes`` counts), full image.
        boxes: ``(N, 4)`` int64 XYXY tight boxes, inclusive max (SAM's ``batched_mask_to_box``).
        iou, stability: ``(N,)`` float32 scores of the mask's token.
        points: ``(N, 2)`` float64 (x, y) original-frame point prompt (NaN for box prompts).
        prompt_index: ``(N,)`` int64 index of the prompt within its crop / box list.
        crop_boxes: ``(N, 4)`` int64 XYXY crop the mask came from.
    """

    rles: list[dict] = field(default_factory=list)
    boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    iou: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    points: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    prompt_index: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    crop_boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, idx: NDArray[np.int64]) -> Candidates:
        idx = np.asarray(idx, dtype=np.int64)
        return Candidates(
            [self.rles[i] for i in idx],
            self.boxes[idx],
            self.iou[idx],
            self.stability[idx],
            self.points[idx],
            self.prompt_index[idx],
            self.crop_boxes[idx],
        )

    @staticmethod
    def concat(parts: list[Candidates]) -> Candidates:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Candidates()
        return Candidates(
            [r for p in parts for r in p.rles],
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.iou for p in parts]),
            np.concatenate([p.stability for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.prompt_index for p in parts]),
            np.concatenate([p.crop_boxes for p in parts]),
        )

    def scores(self, quality_score: str) -> NDArray[np.float32]:
        """The ranking score: stability or predicted IoU."""
        return self.stability if quality_score == "stability" else self.iou


def remove_small_regions_nms(data: Candidates, min_area: int, nms_thresh: float) -> Candidates:
    """Fill holes and remove islands smaller than ``min_area`` in every mask
    (:func:`~edgesam_backend.runtime.quality.cleaned_rles`), then box NMS preferring masks that did not
    change (SAM's ``postprocess_small_regions``); changed masks get a new RLE and box."""
    if not len(data):
        return data
    rles = list(data.rles)
    boxes = data.boxes.copy()
    unchanged = np.ones(len(data), dtype=np.float64)
    for i, mask in cleaned_rles(data.rles, min_area):
        unchanged[i] = 0.0
        boxes[i] = batched_mask_to_box(mask)
        rles[i] = encode_rles(mask[None])[0]
    keep = nms(boxes, unchanged, nms_thresh)
    out = Candidates(rles, boxes, data.iou, data.stability, data.points, data.prompt_index, data.crop_boxes)
    return out.take(keep)
