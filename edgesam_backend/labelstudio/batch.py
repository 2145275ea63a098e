"""Batch predictions (no context): automatic masks for each task's image, one region per mask, under a
time budget so Label Studio (which gives up after 100 s) always gets an answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..runtime.amg import AutomaticMaskGenerator, GenerationStopped
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


def run_batch(
    tasks: list[Any],
    config: LabelConfig,
    label: str,
    state: ProjectState | None,
    settings: Settings,
    metrics: Metrics,
    model_version: str,
    task_embedding: Callable[[Any, int], ImageEmbedding],
    masks_for: Callable[[ImageEmbedding, ProjectState | None], list[dict[str, Any]]],
) -> list[Any]:
    """One result per task, in order; a failing task (or one past the time budget) gets ``[]`` (Label
    Studio stores no prediction and retries it next time). ``task_embedding(task, i)`` resolves and
    encodes a task's image; ``masks_for(emb, state)`` gives its records."""
    outputs = config.outputs_for(label)
    budget_s = settings.batch_time_budget
    t_start = time.monotonic()
    with _budget.deadline(t_start + budget_s if budget_s else None):
        results: list[Any] = []
        for i, task in enumerate(tasks):
            if _budget.cancelled():
                log.info("batch request abandoned by the client after %d of %d tasks", i, len(tasks))
                results.extend([] for _ in tasks[i:])
                break
            elapsed = time.monotonic() - t_start
            per_task = elapsed / i if i else 0.0
            if budget_s and i and elapsed + per_task > budget_s:
                # Label Studio gives up after 100 s and then stores nothing: answer in time; the rest
                # get no prediction now and are predicted by the next "Retrieve predictions"
                log.warning(
                    "batch time budget of %.0f s reached after %d of %d tasks; the rest are left for "
                    "the next request",
                    budget_s,
                    i,
                    len(tasks),
                )
                metrics.batch_deferred.inc(amount=len(tasks) - i)
                results.extend([] for _ in tasks[i:])
                break
            try:
                emb = task_embedding(task, i)
                t0 = time.perf_counter()
                regions: list[dict[str, Any]] = []
                scores = []
                for rec in masks_for(emb, state):
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
                metrics.decode_seconds.observe(time.perf_counter() - t0, "batch")
                metrics.predictions.inc("batch")
                results.append(
                    {
                        "result": regions,
                        "score": round(float(np.mean(scores)) if scores else 0.0, 6),
                        "model_version": model_version,
                    }
                )
            except GenerationStopped:
                # the time budget ran out (or the client left) inside this task: it and the rest get no
                # prediction now (Label Studio retries them with the next request)
                log.warning("batch stopped in task %d of %d (time budget or abandoned)", i + 1, len(tasks))
                metrics.batch_deferred.inc(amount=len(tasks) - i)
                results.extend([] for _ in tasks[i:])
                break
            except BackendError as exc:
                if len(tasks) == 1:
                    raise
                # no prediction for this task (LS stores nothing and retries it next time)
                tid = task.get("id") if isinstance(task, dict) else None
                log.warning("batch prediction for task %s failed: %s", tid, exc.message)
                metrics.prediction_errors.inc("batch", str(exc.status))
                results.append([])
        return results
