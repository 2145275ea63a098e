"""Pre-annotation jobs of the backend (mixed into :class:`.model.EdgeSAMBackend`): which computation a
task needs in its project's mode, keyed for single flight, and the from-prompts computation.

``automatic``: the automatic masks of the task image with the default label, keyed by image identity
+ generator settings + label config + model version. ``from-prompts``: one mask per rectangle/keypoint
the task carries (:mod:`.task_prompts`), keyed by image identity + the prompts. ``none`` (or no
prompts): no job. The results go through :class:`.preannotate.Preannotator`.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import numpy as np

from ..runtime.amg import GenerationStopped
from . import batch
from . import budget as _budget
from .config import LabelConfig, LabelConfigError, parse_label_config
from .errors import BackendError, Unprocessable
from .preannotate import job_key
from .projects import ProjectState, option, project_key
from .task_prompts import TaskPrompt, prompts_fingerprint, task_prompts


class PreannotationJobs:
    """Needs the backend's ``settings``, ``fetcher``, ``projects``, ``preannotator``, ``metrics``,
    ``serving`` (a job computes with the version served when it was keyed), ``version_names()``,
    ``embedding()``, ``automatic_masks()``, ``_image_url()``, ``_default_label()`` and
    ``_prompt_regions()``."""

    settings: Any
    fetcher: Any
    projects: Any
    preannotator: Any
    metrics: Any
    serving: Any

    def preannotation_job(
        self, task: Any, i: int, config: LabelConfig, state: ProjectState | None
    ) -> tuple[str, Any] | None:
        """``(job key, compute)`` of a task's pre-annotation in the project's mode, or None (mode
        ``none``, or ``from-prompts`` and the task has no rectangle/keypoint to start from)."""
        mode = option(state, "preannotate", self.settings.preannotate)
        if mode == "none":
            return None
        url, tid = self._image_url(task, config, i)
        ident = self.fetcher.identity(url, tid)
        extra = state.extra if state else None
        schema = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]
        serving = self.serving
        version = serving.version
        if mode == "automatic":
            label = self._default_label(config, extra)
            opts = batch.automatic_options(self.settings, state)
            key = job_key(ident, mode, opts, label, schema, version)

            def automatic() -> dict[str, Any] | None:
                emb, _ = self.embedding(url, tid, serving)
                t0 = time.perf_counter()
                budget_s = self.settings.batch_time_budget
                # one job may not hold the background worker longer than the batch time budget
                with _budget.deadline(time.monotonic() + budget_s if budget_s else None):
                    try:
                        records = self.automatic_masks(emb, state, serving)
                    except GenerationStopped:
                        self.metrics.preannotations.inc("stopped")
                        raise BackendError(
                            f"automatic masks stopped (time budget of {budget_s:g} s, "
                            "EDGESAM_BATCH_TIME_BUDGET, or nobody waits any more); retried next time",
                            503,
                        ) from None
                pred = batch.records_prediction(records, config, label, self.settings, version)
                self.metrics.decode_seconds.observe(time.perf_counter() - t0, "batch")
                self.metrics.predictions.inc("batch")
                return pred

            return key, automatic
        label_map = option(state, "label_map", self.settings.label_map)
        default = (extra or {}).get("default_label") or self.settings.default_label
        prompts = task_prompts(task, config, label_map, default, set(self.version_names()))
        if not prompts:
            return None
        choice = option(state, "mask_choice", self.settings.mask_choice)
        key = job_key(ident, mode, prompts_fingerprint(prompts), choice, schema, version)
        return key, lambda: self._prompts_prediction(url, tid, prompts, config, state, serving)

    def _prompts_prediction(
        self,
        url: str,
        tid: int | None,
        prompts: list[TaskPrompt],
        config: LabelConfig,
        state: ProjectState | None,
        serving: Any,
    ) -> dict[str, Any] | None:
        emb, _ = self.embedding(url, tid, serving)
        t0 = time.perf_counter()
        regions: list[dict[str, Any]] = []
        scores: list[float] = []
        for p in prompts:
            try:
                r, score = self._prompt_regions(emb, p.raw, p.label, config, state, serving)
            except Unprocessable:
                continue  # e.g. a degenerate box: skip that region only
            regions += r
            scores.append(score)
        self.metrics.decode_seconds.observe(time.perf_counter() - t0, "batch")
        self.metrics.predictions.inc("batch")
        if not regions:
            return None
        return {
            "result": regions,
            "score": round(float(np.mean(scores)), 6),
            "model_version": serving.version,
        }

    def _preannotate_created(self, body: dict[str, Any]) -> int:
        """Start the pre-annotation jobs of newly created tasks (results go to Label Studio's API)."""
        project = body.get("project")
        pid = project.get("id") if isinstance(project, dict) else project
        state = self.projects.get(project_key(pid))
        schema = project.get("label_config") if isinstance(project, dict) else None
        schema = schema if isinstance(schema, str) else (state.schema if state else None)
        tasks = body.get("tasks")
        if not isinstance(schema, str) or not isinstance(tasks, list):
            return 0
        try:
            config = parse_label_config(schema)
        except LabelConfigError:
            return 0
        n = 0
        for i, task in enumerate(tasks):
            try:
                job = self.preannotation_job(task, i, config, state)
            except BackendError:
                continue
            if job is not None and isinstance(task.get("id"), int):
                self.preannotator.answer(task["id"], *job)
                n += 1
        return n
