"""Prompts a task already carries: the rectangles and keypoints in its annotations and predictions
(e.g. a detector's boxes imported as predictions), for the ``from-prompts`` pre-annotation mode.

Each rectangle becomes one box prompt and each keypoint one point prompt, with its label mapped onto
an output label of the labeling config (:meth:`.config.LabelConfig.map_label`: the project's
``label_map``, then ``predicted_values``, then the same name); regions whose label maps to nothing
are skipped. Cancelled annotations and this backend's own predictions (``model_version`` equal to the
backend's) are ignored; identical regions from several sources are used once. The same validation
and percent → pixel conversion as interactive clicks apply (:mod:`.context`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from .config import LabelConfig
from .context import PROMPT_TYPES, RawPrompt, parse_context
from .errors import Unprocessable

log = logging.getLogger("edgesam_backend.labelstudio")

#: At most this many prompts per task (a detector can emit hundreds of boxes).
MAX_TASK_PROMPTS = 200


@dataclass(frozen=True)
class TaskPrompt:
    """One region of the task, as a prompt, with the output label its mask gets."""

    raw: RawPrompt
    label: str
    source_label: str | None


def _sources(task: dict[str, Any], own_versions: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ann in task.get("annotations") or []:
        if isinstance(ann, dict) and not ann.get("was_cancelled"):
            out.extend(r for r in ann.get("result") or [] if isinstance(r, dict))
    for pred in task.get("predictions") or []:
        if isinstance(pred, dict) and str(pred.get("model_version")) not in own_versions:
            out.extend(r for r in pred.get("result") or [] if isinstance(r, dict))
    return out


def _source_label(item: dict[str, Any]) -> str | None:
    value = item.get("value") or {}
    for key in (item.get("type"), "labels"):
        labs = value.get(key) if isinstance(key, str) else None
        if isinstance(labs, list) and labs and isinstance(labs[0], str):
            return labs[0]
    return None


def task_prompts(
    task: dict[str, Any],
    config: LabelConfig,
    label_map: dict[str, str] | None,
    default_label: str | None,
    own_versions: set[str],
) -> list[TaskPrompt]:
    """The task's rectangles/keypoints as prompts (see the module docstring); an unlabelled region
    gets ``default_label`` (skipped when that is None)."""
    prompts: list[TaskPrompt] = []
    seen: set[str] = set()
    for item in _sources(task, own_versions):
        if item.get("type") not in PROMPT_TYPES or item.get("to_name") not in (None, config.image.name):
            continue
        src = _source_label(item)
        label = config.map_label(src, label_map) if src is not None else default_label
        if label is None:
            log.debug("task %s: no output label for %r, region skipped", task.get("id"), src)
            continue
        kind = item["type"]
        value = {k: v for k, v in (item.get("value") or {}).items() if k not in (kind, "labels")}
        value[kind] = [label]
        mapped = {**item, "value": value}
        if kind == "keypointlabels":
            mapped["is_positive"] = True  # a stored keypoint marks the object
        fp = json.dumps(
            [kind, value.get("x"), value.get("y"), value.get("width"), value.get("height"), label]
        )
        if fp in seen:
            continue
        seen.add(fp)
        try:
            raw = parse_context({"result": [mapped]}, config)
        except Unprocessable as exc:
            log.info(
                "task %s: region %s is not a usable prompt: %s", task.get("id"), item.get("id"), exc.message
            )
            continue
        prompts.append(TaskPrompt(raw=raw, label=label, source_label=src))
        if len(prompts) >= MAX_TASK_PROMPTS:
            break
    return prompts


def prompts_fingerprint(prompts: list[TaskPrompt]) -> str:
    """A short hash of the prompts (the single-flight key of a from-prompts job)."""
    doc = [[p.label, p.raw.points_pct.round(4).tolist(), _rect_tuple(p.raw)] for p in prompts]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


def _rect_tuple(raw: RawPrompt) -> list[float] | None:
    r = raw.rect
    return None if r is None else [round(v, 4) for v in (r.x, r.y, r.width, r.height, r.rotation)]
