"""SAM's output records from the generator's final candidates."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import transforms
from ..masks import decode_rles, mask_to_uncompressed_rle
from .candidates import Candidates

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


def build_records(
    data: Candidates,
    original_hw: tuple[int, int],
    output_mode: str,
    box_prompts: NDArray[np.float64] | None = None,
    box_scores: NDArray[np.float64] | None = None,
) -> list[dict[str, Any]]:
    """One record per candidate, in order (see the package docs for the format). Binary masks are
    decoded here, once, only for ``output_mode="binary_mask"``; ``box_prompts`` ``(K, 4)`` switches
    to the box-prompt record fields."""
    if not len(data):
        return []
    from pycocotools import mask as mask_utils

    h, w = original_hw
    # pycocotools' area() builds a uint8 array of length N: under numpy 2 it overflows past 255 RLEs
    areas = np.concatenate([mask_utils.area(data.rles[s : s + 255]) for s in range(0, len(data), 255)])
    if output_mode == "binary_mask":
        binary = decode_rles(data.rles)
        segs: list[Any] = [binary[i] for i in range(len(data))]
    elif output_mode == "coco_rle":
        segs = [
            {
                "size": [h, w],
                "counts": r["counts"].decode("utf-8") if isinstance(r["counts"], bytes) else r["counts"],
            }
            for r in data.rles
        ]
    else:
        segs = [mask_to_uncompressed_rle(mask_utils.decode(r)) for r in data.rles]
    bboxes = transforms.box_xyxy_to_xywh(data.boxes).tolist()
    crops = transforms.box_xyxy_to_xywh(data.crop_boxes).tolist()
    records = []
    for i in range(len(data)):
        rec: dict[str, Any] = {
            "segmentation": segs[i],
            "area": int(areas[i]),
            "bbox": bboxes[i],
            "predicted_iou": float(data.iou[i]),
            # box-prompted masks (proposals, or generate_from_boxes) have no point (NaN)
            "point_coords": []
            if box_prompts is not None or np.isnan(data.points[i, 0])
            else [data.points[i].tolist()],
            "stability_score": float(data.stability[i]),
            "crop_box": crops[i],
        }
        if box_prompts is not None:
            j = int(data.prompt_index[i])
            rec["box_prompt"] = box_prompts[j].tolist()
            rec["prompt_index"] = j
            if box_scores is not None:
                rec["proposal_score"] = float(box_scores[j])
        records.append(rec)
    return records
