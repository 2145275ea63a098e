"""Batch predictions (no context): automatic masks for a task's image, one region per mask, and the
per-task loop that answers Label Studio from the pre-annotation store under a time budget."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime.amg import AutomaticMaskGenerator
from ..runtime.base import BasePredictor, ImageEmbedding
from ..runtime.masks import decode_rles
from . import budget as _budget
from .config import LabelConfig
from .errors import BackendError
from .metrics import Metrics
from .projects import ProjectState, option
from .regions import mask_regions
from .settings import Settings

log = logging.getLogger("edgesam_backend.labelstudio")


def make_generator(predictor: BasePredictor, settings: Settings, state: ProjectState | None) -> Any:
    """The automatic mask generator with the server settings and the project's overrides; COCO RLE
    records, so that only the masks kept after ``max_regions`` are ever decoded to bool."""
    s = settings
    strategy = option(state, "strategy", s.amg_strategy)
    use_props = option(state, "use_proposals", s.amg_use_proposals)
    return AutomaticMaskGenerator(
        predictor,
        strategy=strategy,
        max_prompts=option(state, "max_prompts", s.amg_max_prompts) or None,
        proposal_top_k=int(option(state, "max_regions", s.batch_max_regions)) if use_props else 0,
        points_per_side=option(state, "points_per_side", s.amg_points_per_side),
        points_per_batch=s.amg_points_per_batch,
        pred_iou_thresh=option(state, "pred_iou_thresh", s.amg_pred_iou_thresh),
        stability_score_thresh=option(state, "stability_score_thresh", s.amg_stability_score_thresh),
        box_nms_thresh=option(state, "box_nms_thresh", s.amg_box_nms_thresh),
        min_mask_region_area=option(state, "min_mask_region_area", s.amg_min_mask_region_area),
        output_mode="coco_rle",
        should_stop=_budget.should_stop,  # the request's deadline / cancel (see run_batch)
    )


def automatic_masks(
    predictor: BasePredictor, settings: Settings, emb: ImageEmbedding, state: ProjectState | None = None
) -> list[dict[str, Any]]:
    """The generator's records for an embedding, best first, capped at ``max_regions``, with
    ``segmentation`` as ``(H, W)`` bool (decoded after the cap): box prompts from the region proposals
    when the encoder has them (and they are enabled), else the point grid; with the coverage strategy
    (default) one generator call: proposals first, then points where they found nothing."""
    amg = make_generator(predictor, settings, state)
    max_regions = int(option(state, "max_regions", settings.batch_max_regions))
    use_props = option(state, "use_proposals", settings.amg_use_proposals)
    props = getattr(emb, "proposals", None)
    if amg.strategy == "grid" and use_props and props is not None and len(props):
        nms = option(state, "box_nms_thresh", settings.amg_box_nms_thresh)
        top = props.top(max_regions, nms_thresh=nms)
        records = amg.generate_from_boxes(emb, top.boxes, top.scores, filter=True)
    else:
        records = amg.generate(emb)
    records = list(records)[:max_regions]
    if records:
        masks = decode_rles([r["segmentation"] for r in records])
        for rec, m in zip(records, masks, strict=True):
            rec["segmentation"] = m
    return records


def automatic_options(settings: Settings, state: ProjectState | None) -> dict[str, Any]:
    """The settings automatic masks depend on (part of a pre-annotation job's key)."""
    s = settings
    return {
        "points_per_side": option(state, "points_per_side", s.amg_points_per_side),
        "pred_iou_thresh": option(state, "pred_iou_thresh", s.amg_pred_iou_thresh),
        "stability_score_thresh": option(state, "stability_score_thresh", s.amg_stability_score_thresh),
        "box_nms_thresh": option(state, "box_nms_thresh", s.amg_box_nms_thresh),
        "min_mask_region_area": option(state, "min_mask_region_area", s.amg_min_mask_region_area),
        "max_regions": option(state, "max_regions", s.batch_max_regions),
        "use_proposals": option(state, "use_proposals", s.amg_use_proposals),
        "strategy": option(state, "strategy", s.amg_strategy),
        "max_prompts": option(state, "max_prompts", s.amg_max_prompts),
    }


def records_prediction(
    records: list[dict[str, Any]],
    config: LabelConfig,
    label: str,
    settings: Settings,
    model_version: str,
) -> dict[str, Any] | None:
    """Automatic-mask records → one Label Studio prediction (a region per mask and output control,
    all with ``label``); None when there is no mask (Label Studio would log an empty result)."""
    outputs = config.outputs_for(label)
    regions: list[dict[str, Any]] = []
    scores = []
    for rec in records:
        score = float(rec.get("stability_score", rec.get("predicted_iou", 0.0)))
        scores.append(score)
        regions += mask_regions(
            np.asarray(rec["segmentation"], dtype=bool),
            outputs,
            config.image.name,
            label,
            score,
            0,
            settings.polygon_tolerance,
        )
    if not regions:
        return None
    return {"result": regions, "score": round(float(np.mean(scores)), 6), "model_version": model_version}


def run_batch(
    tasks: list[Any],
    settings: Settings,
    metrics: Metrics,
    answer: Callable[[Any, int, float], tuple[Any, bool]],
) -> list[Any]:
    """One answer per task, in order: ``answer(task, i, wait)`` returns ``(stored prediction or [],
    still computing)`` (computed in the background; see :mod:`.preannotate`), waiting at most ``wait``
    seconds. Waits (``preannotate_wait``) stop once the time budget would be exceeded; a task whose
    result was waited for but is not ready counts as deferred (it reaches Label Studio through its API
    or the next request). A task that cannot be predicted gets ``[]`` (the error is raised for a
    single task)."""
    results: list[Any] = []
    budget = settings.batch_time_budget
    t_start = time.monotonic()
    deferred = 0
    for i, task in enumerate(tasks):
        if _budget.cancelled():
            log.info("batch request abandoned by the client after %d of %d tasks", i, len(tasks))
            results.extend([] for _ in tasks[i:])
            break
        elapsed = time.monotonic() - t_start
        per_task = elapsed / i if i else 0.0
        wait = settings.preannotate_wait
        if wait and budget:
            if i and elapsed + per_task > budget:
                wait = 0.0
            else:
                wait = max(0.0, min(wait, budget - elapsed))
        try:
            result, pending = answer(task, i, wait)
            results.append(result)
            deferred += int(pending and settings.preannotate_wait > 0)
        except BackendError as exc:
            if len(tasks) == 1:
                raise
            tid = task.get("id") if isinstance(task, dict) else None
            log.warning("batch prediction for task %s failed: %s", tid, exc.message)
            metrics.prediction_errors.inc("batch", str(exc.status))
            results.append([])
    if deferred:
        log.warning(
            "batch time budget of %.0f s: %d of %d tasks answered before their result was ready",
            budget,
            deferred,
            len(tasks),
        )
        metrics.batch_deferred.inc(amount=deferred)
    return results
