"""Lazy upscaling of chosen low-res masks: ``(256, 256)`` logits → original-frame bool masks.

Only the masks a caller keeps are upscaled, one mask per :func:`transforms.upscale_logits` call (the
same 1-channel path as ``predict``, bit for bit: OpenCV resizes each channel independently), in chunks
of at most :data:`UPSCALE_CHUNK_BYTES`, so no ``(K, H, W)`` float intermediate ever exists.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
from numpy.typing import NDArray

from . import transforms
from .masks import MASK_THRESHOLD

#: Memory budget (bytes) of one chunk of upscaled bool masks.
UPSCALE_CHUNK_BYTES = 256 << 20


def chunk_size(hw: tuple[int, int], chunk_bytes: int = UPSCALE_CHUNK_BYTES, copies: int = 1) -> int:
    """Masks per chunk: ``copies`` bool ``(H, W)`` masks per mask fit ``chunk_bytes`` (at least 1)."""
    return max(1, int(chunk_bytes // (copies * int(hw[0]) * int(hw[1]))))


def upscale_mask(
    low_res: NDArray[np.float32], input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> NDArray[np.bool_]:
    """One ``(256, 256)`` low-res logit map → ``(H, W)`` bool mask (``logits > 0``), original frame."""
    logits = transforms.upscale_logits(low_res[None], input_hw, original_hw)
    return logits[0] > MASK_THRESHOLD


def iter_upscaled(
    low_res: NDArray[np.float32],
    input_hw: tuple[int, int],
    original_hw: tuple[int, int],
    chunk_bytes: int = UPSCALE_CHUNK_BYTES,
) -> Iterator[NDArray[np.bool_]]:
    """``(K, 256, 256)`` low-res logits → consecutive chunks ``(k, H, W)`` bool (``k`` bounded by
    ``chunk_bytes``), in order; concatenated they are ``upscale_logits(low_res) > 0``."""
    h, w = int(original_hw[0]), int(original_hw[1])
    step = chunk_size((h, w), chunk_bytes)
    for s in range(0, low_res.shape[0], step):
        part = low_res[s : s + step]
        out = np.empty((part.shape[0], h, w), dtype=bool)
        for j in range(part.shape[0]):
            out[j] = upscale_mask(part[j], input_hw, (h, w))
        yield out


def upscale_masks_transposed(
    low_res: NDArray[np.float32],
    rows: NDArray[np.int64],
    toks: NDArray[np.int64],
    input_hw: tuple[int, int],
    crop_hw: tuple[int, int],
    canvas_hw: tuple[int, int],
    offset_xy: tuple[int, int] = (0, 0),
) -> NDArray[np.bool_]:
    """``low_res[rows, toks]`` (``low_res``: ``(B, T, 256, 256)``, a crop's decoder output) → bool masks
    of the crop (``crop_hw``) pasted at ``offset_xy`` into a ``canvas_hw`` frame and stored
    **transposed**, ``(n, W, H)``: pycocotools' Fortran layout, so RLE encoding needs no further copy
    (OpenCV's transpose of each thresholded mask is ~5x cheaper than numpy's transposing copy of a bool
    batch). Only the selected masks are touched, one upscaling call each."""
    h, w = int(crop_hw[0]), int(crop_hw[1])
    big_h, big_w = int(canvas_hw[0]), int(canvas_hw[1])
    x0, y0 = offset_xy
    full = (h, w) == (big_h, big_w)
    out = (np.empty if full else np.zeros)((rows.size, big_w, big_h), dtype=bool)
    for j, (r, t) in enumerate(zip(rows.tolist(), toks.tolist(), strict=True)):
        mask = upscale_mask(low_res[r, t], input_hw, (h, w)).view(np.uint8)
        if full:
            cv2.transpose(mask, dst=out[j].view(np.uint8))
        else:
            out[j, x0 : x0 + w, y0 : y0 + h] = cv2.transpose(mask).view(bool)
    return out


__all__ = ["UPSCALE_CHUNK_BYTES", "chunk_size", "iter_upscaled", "upscale_mask", "upscale_masks_transposed"]
