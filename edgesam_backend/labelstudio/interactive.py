"""Interactive predictions: one prompt (a click, points or a box) → one mask, via the predictor's
token-selecting decode (only the chosen mask is upscaled).

Mask choice (``EDGESAM_MASK_CHOICE`` or ``extra_params.mask_choice``): ``auto`` takes the best of the
three multimask outputs by stability score for a single point (one click is ambiguous) and the
single-mask token 0 for a box or several points (SAM's recommendation); ``single`` always token 0;
``stability``/``iou`` always the best of three by that score.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..runtime.base import BasePredictor, ImageEmbedding


def choose_mask(mode: str, n_points: int, has_box: bool) -> tuple[int, str | None]:
    """``(num_multimask_outputs, score kind or None for token 0)`` for a prompt."""
    if mode == "auto":
        return (3, "stability") if (n_points == 1 and not has_box) else (1, None)
    if mode == "single":
        return 1, None
    return 3, mode


def predict_mask(
    predictor: BasePredictor,
    emb: ImageEmbedding,
    point_coords: NDArray[np.float64] | None,
    point_labels: NDArray[np.int64] | None,
    box: NDArray[np.float64] | None,
    num_multimask_outputs: int,
    kind: str | None,
    mask_input: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.bool_], float, NDArray[np.float32]]:
    """``(mask, score, low_res)``: the ``(H, W)`` bool mask (original frame) that
    ``predictor.predict(...)`` returns at index ``best(kind)`` (token 0 with ``kind=None``), its score
    (stability unless ``kind="iou"``) and its ``(S/4, S/4)`` low-res logits (model frame: the next
    click's ``mask_input``), from :meth:`BasePredictor.predict_selected`: only that mask is upscaled."""
    pred = predictor.predict_selected(
        point_coords,
        point_labels,
        box,
        mask_input,
        select=kind or "single",
        num_multimask_outputs=num_multimask_outputs,
        embedding=emb,
    )
    return pred.masks[0], float(pred.scores(kind or "stability")[0]), pred.low_res_logits[0]
