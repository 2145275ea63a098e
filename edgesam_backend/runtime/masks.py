"""Mask scores and selection on low-res logits (numpy)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


def stability_score(
    logits: NDArray[np.float32], mask_threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> NDArray[np.float32]:
    """``count(logit > t + offset) / count(logit > t - offset)`` over the last two axes.

    ``(..., H, W)`` → ``(...)`` float32; integer counts, float32 division as in the official code;
    an empty union scores 0.
    """
    inter = np.count_nonzero(logits > (mask_threshold + offset), axis=(-2, -1))
    union = np.count_nonzero(logits > (mask_threshold - offset), axis=(-2, -1))
    return (inter.astype(np.float32) / np.maximum(union, 1).astype(np.float32)).astype(np.float32)
