"""The backend's logic, independent of the web framework: /setup, /predict, /webhook.

Interactive (``params.context`` with regions): one prompt → one mask → a ``brushlabels`` region (and
``polygonlabels`` regions when the config has them) with the prompt's label. Batch (no context):
automatic masks for each task's image, one region per mask, labelled with the default label; one
result per task, in order (a task whose image fails gets ``[]``: no prediction, retried next time).

Mask choice (``EDGESAM_MASK_CHOICE`` or ``extra_params.mask_choice``): ``auto`` takes the best of the
three multimask outputs by stability score for a single point (one click is ambiguous) and the
single-mask token 0 for a box or several points (SAM's recommendation); ``single`` always token 0;
``stability``/``iou`` always the best of three by that score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..runtime.base import BasePredictor, ImageEmbedding, PromptError, pack_prompt
from ..runtime.masks import MASK_THRESHOLD
from ..runtime.tokens import select_tokens
from ..runtime.transforms import rotate_mask, upscale_logits
from .cache import EmbeddingCache, SingleFlight, UrlIndex
from .config import LabelConfig, LabelConfigError, parse_label_config
from .context import parse_context, to_pixels
from .errors import BackendError, BadRequest, Unprocessable
from .images import ImageFetcher, decode_image
from .metrics import Metrics
from .regions import mask_regions
from .settings import MaskChoice, Settings

log = logging.getLogger("edgesam_backend.labelstudio")

MASK_CHOICES = ("auto", "single", "stability", "iou")
#: extra_params keys (from Label Studio's ML backend registration) that override settings per project.
EXTRA_PARAMS = {
    "mask_choice": str,
    "default_label": str,
    "points_per_side": int,
    "pred_iou_thresh": float,
    "stability_score_thresh": float,
    "box_nms_thresh": float,
    "min_mask_region_area": int,
    "max_regions": int,
    "use_proposals": bool,
}
MAX_PROJECTS = 1000
MAX_PENDING_PRECOMPUTE = 256


@dataclass
class ProjectState:
    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def project_key(project: Any) -> str | None:
    """``"12.1712345678"`` (Label Studio's project uid) → ``"12"``."""
    if project is None:
        return None
    return str(project).split(".", 1)[0]


def choose_mask(mode: str, n_points: int, has_box: bool) -> tuple[int, str | None]:
    """``(num_multimask_outputs, score kind or None for token 0)`` for a prompt."""
    if mode == "auto":
        return (3, "stability") if (n_points == 1 and not has_box) else (1, None)
    if mode == "single":
        return 1, None
    return 3, mode


def _embedding_nbytes(e: ImageEmbedding) -> int:
    return int(e.embeddings.nbytes) + 1024


class EdgeSAMBackend:
    """Owns the predictor, the embedding cache and the image fetcher; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        predictor: BasePredictor,
        model_version: str,
        fetcher: ImageFetcher | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.predictor = predictor
        self.model_version = model_version
        self.fetcher = fetcher or ImageFetcher(settings)
        self.metrics = metrics or Metrics()
        self.cache: EmbeddingCache[ImageEmbedding] = EmbeddingCache(
            int(settings.cache_mb * 1024 * 1024), _embedding_nbytes
        )
        self.url_index = UrlIndex(settings.url_ttl)
        self._downloads: SingleFlight[tuple[ImageEmbedding, bool]] = SingleFlight()
        self._projects: OrderedDict[str, ProjectState] = OrderedDict()
        self._lock = threading.Lock()
        self._precompute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesam-precompute")
        self._pending = 0
        m = self.metrics
        m.cache_hits.inc(amount=0)
        m.cache_misses.inc(amount=0)
        m.gauge(
            "edgesam_embedding_cache_bytes", "Bytes held by the embedding cache.", lambda: self.cache.nbytes
        )
        m.gauge("edgesam_embedding_cache_entries", "Images in the embedding cache.", lambda: len(self.cache))
        m.gauge(
            "edgesam_embedding_cache_evictions", "Embeddings evicted so far.", lambda: self.cache.evictions
        )
        m.gauge("edgesam_precompute_pending", "Embeddings queued for precomputation.", lambda: self._pending)

    def close(self) -> None:
        self._precompute.shutdown(wait=False, cancel_futures=True)
        self.fetcher.close()

    # --- projects ---------------------------------------------------------------------------------
    def _project(self, key: str | None) -> ProjectState | None:
        if key is None:
            return None
        with self._lock:
            st = self._projects.get(key)
            if st is not None:
                self._projects.move_to_end(key)
            return st

    def _remember(self, key: str, state: ProjectState) -> None:
        with self._lock:
            self._projects[key] = state
            self._projects.move_to_end(key)
            while len(self._projects) > MAX_PROJECTS:
                self._projects.popitem(last=False)

    @staticmethod
    def parse_extra(extra: Any) -> dict[str, Any]:
        """Validate ``extra_params`` (a dict or JSON text); unknown keys are ignored."""
        if extra in (None, "", {}):
            return {}
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                raise BadRequest(f"extra_params is not valid JSON: {extra[:200]!r}") from None
        if not isinstance(extra, dict):
            raise BadRequest("extra_params must be a JSON object")
        out: dict[str, Any] = {}
        for k, v in extra.items():
            typ = EXTRA_PARAMS.get(k)
            if typ is None:
                log.info("ignoring unknown extra_params key %r", k)
                continue
            if typ is bool:
                if not isinstance(v, bool):
                    raise BadRequest(f"extra_params.{k} must be true or false, got {v!r}")
            elif typ is int:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise BadRequest(f"extra_params.{k} must be a non-negative integer, got {v!r}")
            elif typ is float:
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                    raise BadRequest(f"extra_params.{k} must be a number in 0-1, got {v!r}")
            elif not isinstance(v, str):
                raise BadRequest(f"extra_params.{k} must be a string, got {v!r}")
            out[k] = v
        if "mask_choice" in out and out["mask_choice"] not in MASK_CHOICES:
            raise BadRequest(f"extra_params.mask_choice must be one of {', '.join(MASK_CHOICES)}")
        return out

    # --- /setup -------------------------------------------------------------------------------------
    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest("/setup needs 'schema' (the project's label config XML)")
        try:
            config = parse_label_config(schema)
        except LabelConfigError as exc:
            raise BadRequest(f"label config: {exc}") from None
        extra = self.parse_extra(body.get("extra_params"))
        if "default_label" in extra:
            self._default_label(config, extra)  # validates it against the config
        self.fetcher.set_fallback(body.get("hostname"), body.get("access_token"))
        key = project_key(body.get("project"))
        if key is not None:
            self._remember(key, ProjectState(schema=schema, extra=extra))
        return {"model_version": self.model_version}

    # --- images --------------------------------------------------------------------------------------
    def embedding(self, url: Any, task_id: int | None) -> tuple[ImageEmbedding, bool]:
        """``(embedding, cache_hit)`` of the task image at ``url``; one download/encode per image."""
        ident = self.fetcher.identity(url, task_id)
        digest = self.url_index.get(ident)
        if digest is not None:
            emb = self.cache.get(digest)
            if emb is not None:
                self.metrics.cache_hits.inc()
                return emb, True

        def load() -> tuple[ImageEmbedding, bool]:
            t0 = time.perf_counter()
            data = self.fetcher.fetch(url, task_id)
            self.metrics.fetch_seconds.observe(time.perf_counter() - t0)
            dig = hashlib.sha256(data).hexdigest()

            def encode() -> ImageEmbedding:
                image = decode_image(data, self.settings.max_image_pixels)
                t1 = time.perf_counter()
                emb = self.predictor.encode(image)
                self.metrics.encode_seconds.observe(time.perf_counter() - t1)
                return emb

            emb, hit = self.cache.get_or_compute(dig, encode)
            self.url_index.put(ident, dig)
            return emb, hit

        (emb, hit), shared = self._downloads.do(ident, load)
        hit = hit or shared
        (self.metrics.cache_hits if hit else self.metrics.cache_misses).inc()
        return emb, hit

    # --- /predict ------------------------------------------------------------------------------------
    def _config(self, body: dict[str, Any], state: ProjectState | None) -> LabelConfig:
        schema = body.get("label_config")
        if not isinstance(schema, str) or not schema.strip():
            schema = state.schema if state else None
        if schema is None:
            raise BadRequest(
                "no label_config in the request and no /setup seen for this project: cannot tell where the "
                "image is and which labels to use"
            )
        try:
            return parse_label_config(schema)
        except LabelConfigError as exc:
            raise BadRequest(f"label config: {exc}") from None

    def _image_url(self, task: Any, config: LabelConfig, i: int) -> tuple[str, int | None]:
        if not isinstance(task, dict):
            raise BadRequest(f"tasks[{i}] must be an object")
        data = task.get("data")
        if not isinstance(data, dict):
            raise BadRequest(f"tasks[{i}].data must be an object")
        key = config.image.value_key
        url = data.get(key)
        if not isinstance(url, str) or not url.strip():
            raise Unprocessable(
                f'tasks[{i}].data has no image URL under {key!r} (from <Image value="${key}">)'
            )
        tid = task.get("id")
        return url, tid if isinstance(tid, int) and not isinstance(tid, bool) else None

    def _option(self, name: str, state: ProjectState | None, default: Any) -> Any:
        if state is not None and name in state.extra:
            return state.extra[name]
        return default

    def _default_label(self, config: LabelConfig, extra: dict[str, Any] | None = None) -> str:
        label = (extra or {}).get("default_label") or self.settings.default_label
        if label is None:
            return config.output_labels[0]
        if label not in config.output_labels:
            raise Unprocessable(
                f"default label {label!r} (EDGESAM_DEFAULT_LABEL / extra_params.default_label) is not in the "
                f"label config (labels: {', '.join(config.output_labels)})"
            )
        return label

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise BadRequest("'tasks' must be a non-empty list")
        state = self._project(project_key(body.get("project")))
        config = self._config(body, state)
        params = body.get("params")
        if params is not None and not isinstance(params, dict):
            raise BadRequest("'params' must be an object")
        context = (params or {}).get("context")
        if context:
            if len(tasks) != 1:
                raise BadRequest(
                    f"an interactive request (with context) must carry one task, got {len(tasks)}"
                )
            return {"results": [self._interactive(tasks[0], context, config, state)]}
        return {"results": self._batch(tasks, config, state)}

    def _interactive(
        self, task: Any, context: Any, config: LabelConfig, state: ProjectState | None
    ) -> dict[str, Any]:
        raw = parse_context(context, config)
        url, tid = self._image_url(task, config, 0)
        label = raw.label or self._default_label(config, state.extra if state else None)
        outputs = config.outputs_for(label)
        emb, _ = self.embedding(url, tid)
        t0 = time.perf_counter()
        prompt = to_pixels(raw, emb.original_hw)
        mode: MaskChoice = self._option("mask_choice", state, self.settings.mask_choice)
        k, kind = choose_mask(mode, raw.n_points, prompt.box is not None)
        try:
            mask, score = self.predict_mask(
                emb, prompt.point_coords, prompt.point_labels, prompt.box, k, kind
            )
        except PromptError as exc:
            raise Unprocessable(f"invalid prompt: {exc}") from None
        if prompt.output_rotation:
            mask = rotate_mask(mask, prompt.output_rotation)
        regions = mask_regions(
            mask,
            outputs,
            config.image.name,
            label,
            score,
            prompt.image_rotation,
            self.settings.polygon_tolerance,
        )
        self.metrics.decode_seconds.observe(time.perf_counter() - t0, "interactive")
        self.metrics.predictions.inc("interactive")
        return {"result": regions, "score": round(score, 6), "model_version": self.model_version}

    def predict_mask(
        self,
        emb: ImageEmbedding,
        point_coords: NDArray[np.float64] | None,
        point_labels: NDArray[np.int64] | None,
        box: NDArray[np.float64] | None,
        num_multimask_outputs: int,
        kind: str | None,
    ) -> tuple[NDArray[np.bool_], float]:
        """The mask ``predictor.predict(...)`` returns at index ``best(kind)`` (or 0 with ``kind=None``),
        and its score — computed the same way (same prompt packing, decoder call, token selection and
        upscaling) but upscaling only the chosen mask, which saves two full-size resizes per click."""
        coords, labels = pack_prompt(point_coords, point_labels, box, emb.original_hw)
        low, iou, stab = self.predictor.predict_low_res(coords, labels, None, emb)
        sl = select_tokens(num_multimask_outputs)
        low, iou, stab = low[0, sl], iou[0, sl], stab[0, sl]
        scores = iou if kind == "iou" else stab
        idx = 0 if kind is None else int(np.argmax(scores))
        logits = upscale_logits(low[idx : idx + 1], emb.input_hw, emb.original_hw)[0]
        return logits > MASK_THRESHOLD, float(scores[idx])

    def _amg(self, state: ProjectState | None) -> Any:
        from ..runtime.amg import AutomaticMaskGenerator  # lazy: only batch mode needs it

        s = self.settings
        return AutomaticMaskGenerator(
            self.predictor,
            points_per_side=self._option("points_per_side", state, s.amg_points_per_side),
            points_per_batch=s.amg_points_per_batch,
            pred_iou_thresh=self._option("pred_iou_thresh", state, s.amg_pred_iou_thresh),
            stability_score_thresh=self._option(
                "stability_score_thresh", state, s.amg_stability_score_thresh
            ),
            box_nms_thresh=self._option("box_nms_thresh", state, s.amg_box_nms_thresh),
            min_mask_region_area=self._option("min_mask_region_area", state, s.amg_min_mask_region_area),
            output_mode="binary_mask",
        )

    def automatic_masks(self, emb: ImageEmbedding, state: ProjectState | None = None) -> list[dict[str, Any]]:
        """The automatic mask generator's records for an embedding, best first, capped at max_regions:
        box prompts from the region proposals when the encoder has them (and they are enabled),
        else the point grid."""
        amg = self._amg(state)
        max_regions = int(self._option("max_regions", state, self.settings.batch_max_regions))
        use_props = self._option("use_proposals", state, self.settings.amg_use_proposals)
        props = getattr(emb, "proposals", None)
        if use_props and props is not None and len(props):
            nms = self._option("box_nms_thresh", state, self.settings.amg_box_nms_thresh)
            top = props.top(max_regions, nms_thresh=nms)
            records = amg.generate_from_boxes(emb, top.boxes, top.scores)
        else:
            records = amg.generate(emb)
        return list(records)[:max_regions]

    def _batch(self, tasks: list[Any], config: LabelConfig, state: ProjectState | None) -> list[Any]:
        if not self.settings.batch:
            return [[] for _ in tasks]  # interactive only (EDGESAM_BATCH=false): no predictions stored
        label = self._default_label(config, state.extra if state else None)
        outputs = config.outputs_for(label)
        results: list[Any] = []
        budget = self.settings.batch_time_budget
        t_start = time.monotonic()
        for i, task in enumerate(tasks):
            elapsed = time.monotonic() - t_start
            per_task = elapsed / i if i else 0.0
            if budget and i and elapsed + per_task > budget:
                # Label Studio gives up after 100 s and then stores nothing: answer in time; the rest
                # get no prediction now and are predicted by the next "Retrieve predictions"
                log.warning(
                    "batch time budget of %.0f s reached after %d of %d tasks; the rest are left for "
                    "the next request",
                    budget,
                    i,
                    len(tasks),
                )
                self.metrics.batch_deferred.inc(amount=len(tasks) - i)
                results.extend([] for _ in tasks[i:])
                break
            try:
                url, tid = self._image_url(task, config, i)
                emb, _ = self.embedding(url, tid)
                t0 = time.perf_counter()
                records = self.automatic_masks(emb, state)
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
                        self.settings.polygon_tolerance,
                    )
                self.metrics.decode_seconds.observe(time.perf_counter() - t0, "batch")
                self.metrics.predictions.inc("batch")
                results.append(
                    {
                        "result": regions,
                        "score": round(float(np.mean(scores)) if scores else 0.0, 6),
                        "model_version": self.model_version,
                    }
                )
            except BackendError as exc:
                if len(tasks) == 1:
                    raise
                # no prediction for this task (LS stores nothing and retries it next time)
                tid = task.get("id") if isinstance(task, dict) else None
                log.warning("batch prediction for task %s failed: %s", tid, exc.message)
                self.metrics.prediction_errors.inc("batch", str(exc.status))
                results.append([])
        return results

    # --- /webhook ------------------------------------------------------------------------------------
    def webhook(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        action = body.get("action")
        if action == "TASKS_CREATED":
            n = self._queue_precompute(body) if self.settings.precompute_on_webhook else 0
            return 200, {"status": "ok", "action": action, "precompute_queued": n}
        if isinstance(action, str) and action:
            return 200, {"status": "Unknown event", "action": action}
        raise BadRequest("webhook payload has no 'action'")

    def _queue_precompute(self, body: dict[str, Any]) -> int:
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            return 0
        project = body.get("project")
        schema = project.get("label_config") if isinstance(project, dict) else None
        if not isinstance(schema, str):
            pid = project.get("id") if isinstance(project, dict) else project
            st = self._project(project_key(pid))
            schema = st.schema if st else None
        try:
            config = parse_label_config(schema) if isinstance(schema, str) else None
        except LabelConfigError:
            config = None
        key = config.image.value_key if config else None
        queued = 0
        for task in tasks:
            if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
                continue
            data = task["data"]
            url = data.get(key) if key else next((v for v in data.values() if isinstance(v, str)), None)
            if not isinstance(url, str):
                continue
            with self._lock:
                if self._pending >= MAX_PENDING_PRECOMPUTE:
                    self.metrics.precompute.inc("dropped")
                    continue
                self._pending += 1
            tid = task.get("id") if isinstance(task.get("id"), int) else None
            self._precompute.submit(self._precompute_one, url, tid)
            queued += 1
        return queued

    def _precompute_one(self, url: str, task_id: int | None) -> None:
        try:
            _, hit = self.embedding(url, task_id)
            self.metrics.precompute.inc("cached" if hit else "encoded")
        except BackendError as exc:
            log.info("precompute for task %s skipped: %s", task_id, exc.message)
            self.metrics.precompute.inc("failed")
        except Exception:  # a background job must never die silently without a trace
            log.exception("precompute for task %s failed", task_id)
            self.metrics.precompute.inc("failed")
        finally:
            with self._lock:
                self._pending -= 1
