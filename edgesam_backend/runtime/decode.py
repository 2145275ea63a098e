"""Mask-token selection on decoder outputs: the one rule every caller uses (predict, the automatic mask
generator, the pipeline's ``segment``/``refine``, the Label Studio backend).

The decoder returns 4 mask tokens per prompt. Two orthogonal choices pick what a caller keeps:

* ``num_multimask_outputs`` — the *candidate* tokens (:func:`~edgesam_backend.runtime.tokens.select_tokens`):
  1 → token 0 (single-mask token), 3 → tokens 1-3 (SAM's multimask set), 4 → tokens 0-3;
* ``select`` — what to keep of the candidates: ``"all"`` keeps every candidate (K = 1, 3 or 4),
  ``"stability"`` / ``"iou"`` keep the best candidate by that score (K = 1, first on ties, as
  ``np.argmax``), ``"single"`` is token 0 (K = 1; the same as ``"all"`` with one candidate).

Default candidates: ``"single"`` → 1, ``"stability"``/``"iou"`` → 3, ``"all"`` → 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .masks import MASK_THRESHOLD, STABILITY_OFFSET, stability_score
from .tokens import select_tokens

#: ``select=`` values of :meth:`BasePredictor.decode <edgesam_backend.runtime.base.BasePredictor.decode>`.
SELECT_MODES = ("single", "stability", "iou", "all")
_DEFAULT_CANDIDATES = {"single": 1, "stability": 3, "iou": 3, "all": 4}


@dataclass
class Decoded:
    """Decoder outputs of B prompts after token selection (K kept tokens per prompt).

    Attributes:
        low_res_logits: ``(B, K, 256, 256)`` float32, model frame (the decoder's 256x256 output).
        iou_predictions: ``(B, K)`` float32 IoU-head outputs.
        stability_scores: ``(B, K)`` float32 stability scores at the requested offset.
        tokens: ``(B, K)`` int64 mask-token index (0-3) of each kept mask.
    """

    low_res_logits: NDArray[np.float32]
    iou_predictions: NDArray[np.float32]
    stability_scores: NDArray[np.float32]
    tokens: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.low_res_logits.shape[0])

    def scores(self, kind: str = "stability") -> NDArray[np.float32]:
        """``(B, K)`` scores of ``kind`` (``"stability"`` or ``"iou"``)."""
        if kind not in ("stability", "iou"):
            raise ValueError(f"score kind must be 'stability' or 'iou', got {kind!r}")
        return self.stability_scores if kind == "stability" else self.iou_predictions


def candidate_tokens(select: str, num_multimask_outputs: int | None = None) -> slice:
    """Token slice of the candidates for ``select`` (see module docs); raises ``ValueError``."""
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    k = _DEFAULT_CANDIDATES[select] if num_multimask_outputs is None else num_multimask_outputs
    sl = select_tokens(k)
    if select == "single" and sl != select_tokens(1):
        raise ValueError(f"select='single' is token 0; num_multimask_outputs must be 1, got {k!r}")
    return sl


def select_masks(
    low_res: NDArray[np.float32],
    iou: NDArray[np.float32],
    stability: NDArray[np.float32],
    select: str = "all",
    num_multimask_outputs: int | None = None,
    stability_offset: float = STABILITY_OFFSET,
) -> Decoded:
    """Keep the tokens ``select`` asks for.

    Args:
        low_res: ``(B, 4, 256, 256)`` decoder logits; ``iou``, ``stability``: ``(B, 4)`` (stability at
            offset 1.0, the decoder's own).
        stability_offset: with another offset the candidates' stability is recomputed on ``low_res``
            (before choosing by stability).
    Returns:
        :class:`Decoded` with views into ``low_res`` where possible (no copy of the logits for ``"all"``).
    """
    sl = candidate_tokens(select, num_multimask_outputs)
    low = low_res[:, sl]
    iou_c = np.asarray(iou[:, sl], dtype=np.float32)
    if stability_offset != STABILITY_OFFSET:
        stab_c = stability_score(low, MASK_THRESHOLD, stability_offset)
    else:
        stab_c = np.asarray(stability[:, sl], dtype=np.float32)
    b = low.shape[0]
    token_ids = np.arange(low_res.shape[1], dtype=np.int64)[sl]
    if select in ("all", "single"):
        return Decoded(low, iou_c, stab_c, np.tile(token_ids, (b, 1)))
    best = np.argmax(stab_c if select == "stability" else iou_c, axis=1)
    rows = np.arange(b)
    return Decoded(
        low[rows, best][:, None],
        iou_c[rows, best][:, None],
        stab_c[rows, best][:, None],
        token_ids[best][:, None],
    )


__all__ = ["SELECT_MODES", "Decoded", "candidate_tokens", "select_masks"]
