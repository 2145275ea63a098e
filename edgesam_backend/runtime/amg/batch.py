"""One decoder batch of the generator: quality filter on the low-res outputs, lazy upscaling of the
survivors (memory-bounded chunks), tight boxes, the crop-edge filter and RLE compression."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import transforms
from ..base import ImageEmbedding
from ..decode import Decoded
from ..masks import batched_mask_to_box, encode_rles_transposed
from ..quality import quality_keep
from ..upscale import chunk_size, upscale_masks_transposed
from .candidates import Candidates

#: Pixels within which a box counts as touching a crop edge (SAM's value).
CROP_EDGE_ATOL = 20.0


def process_batch(
    d: Decoded,
    prompt_xy: NDArray[np.float64],
    prompt_index: NDArray[np.int64],
    crop_box: list[int],
    original_hw: tuple[int, int],
    emb: ImageEmbedding,
    quality_score: str,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    chunk_bytes: int,
    st: dict[str, Any],
) -> Candidates:
    """Decoded batch (``d``: ``(B, K, 256, 256)`` kept tokens of the crop ``emb``) → surviving masks as
    RLEs in the full-image frame, vectorised over masks.

    Candidates are numbered prompt-major (SAM's order): ``f = row * K + j`` for kept token ``j``.
    ``prompt_xy`` ``(B, 2)`` original-frame points (NaN for boxes), ``prompt_index`` ``(B,)``.
    """
    b, k = d.low_res_logits.shape[:2]
    iou = d.iou_predictions.reshape(-1)
    stab = d.stability_scores.reshape(-1)
    source = np.repeat(np.arange(b), k)  # candidate -> prompt row
    slot = np.tile(np.arange(k), b)  # candidate -> kept-token slot
    keep = quality_keep(iou, stab, quality_score, pred_iou_thresh, stability_score_thresh)
    idx = np.flatnonzero(keep)
    st["candidates"] += b * k
    st["after_quality_filter"] += int(idx.size)
    if not idx.size:
        return Candidates()

    x0, y0 = int(crop_box[0]), int(crop_box[1])
    shift = np.array([x0, y0, x0, y0], dtype=np.int64)
    crop_h, crop_w = emb.original_hw
    rles: list[dict] = []
    boxes, kept = [], []
    # per mask: the full-frame transposed bool mask handed to pycocotools (+ a copy when the edge
    # filter drops some)
    step = chunk_size(original_hw, chunk_bytes, copies=2)
    for s in range(0, idx.size, step):
        sel = idx[s : s + step]
        t = time.perf_counter()
        masks_t = upscale_masks_transposed(
            d.low_res_logits, source[sel], slot[sel], emb.input_hw, emb.original_hw, original_hw, (x0, y0)
        )
        st["upscale_s"] += time.perf_counter() - t
        crop_t = masks_t[:, x0 : x0 + crop_w, y0 : y0 + crop_h]
        bx = batched_mask_to_box(crop_t)[:, [1, 0, 3, 2]] + shift  # transposed: rows are x
        ok = ~transforms.is_box_near_crop_edge(bx, crop_box, original_hw, CROP_EDGE_ATOL)
        if not ok.any():
            continue
        if not ok.all():
            masks_t = masks_t[ok]
        rles.extend(encode_rles_transposed(masks_t))
        boxes.append(bx[ok])
        kept.append(sel[ok])
    st["after_edge_filter"] += len(rles)
    if not rles:
        return Candidates()
    kept_idx = np.concatenate(kept)
    return Candidates(
        rles,
        np.concatenate(boxes),
        iou[kept_idx],
        stab[kept_idx],
        np.asarray(prompt_xy, dtype=np.float64)[source[kept_idx]],
        np.asarray(prompt_index, dtype=np.int64)[source[kept_idx]],
        np.tile(np.asarray(crop_box, dtype=np.int64), (kept_idx.size, 1)),
    )
