"""The backend's logic, independent of the web framework: /setup, /predict, /webhook.

:class:`EdgeSAMBackend` is the facade the app uses; the concerns live beside it: project state and
``extra_params`` (:mod:`.projects`), interactive masks (:mod:`.interactive`), batch predictions under a
time budget (:mod:`.batch`) and the webhook precompute queue (:mod:`.precompute`).

Interactive (``params.context`` with regions): one prompt → one mask → a region on every output
control of the config (brush, bitmask, polygons, tight rectangle) with the prompt's label. Batch (no
context: opening a task, "Retrieve Predictions"): answered at once from the pre-annotation store
(:mod:`.preannotate`), per the project's mode — ``none``; ``automatic`` masks of the whole image with
the default label; ``from-prompts``: one mask per rectangle/keypoint the task already has
(:mod:`.task_prompts`), with its mapped label. One result per task, in order (``[]``: no prediction
now; a background result reaches Label Studio through ``POST /api/predictions``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from ..formats.labelstudio.coords import rotate_mask
from ..runtime.base import BasePredictor, ImageEmbedding
from ..runtime.prompts import PromptError
from . import batch, interactive
from .cache import SingleFlight, UrlIndex
from .config import LabelConfig, LabelConfigError, parse_label_config
from .context import parse_context, to_pixels
from .errors import BadRequest, Unprocessable
from .images import ImageFetcher, decode_image
from .lsapi import LabelStudioAPI
from .metrics import Metrics
from .preannotate import Preannotator
from .precompute import PrecomputeQueue
from .prejobs import PreannotationJobs
from .priority import Priority
from .projects import Projects, ProjectState, option, parse_extra, project_key
from .refine import ClickMemory
from .regions import mask_regions
from .serving import ServedModels, Serving
from .settings import MaskChoice, Settings


class EdgeSAMBackend(PreannotationJobs, ServedModels):
    """Owns the served model (:mod:`.serving`), the image fetcher and the jobs; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        predictor: BasePredictor,
        model_version: str,
        fetcher: ImageFetcher | None = None,
        metrics: Metrics | None = None,
        store_namespace: str | None = None,
        checkpoint: str | None = None,
    ) -> None:
        self.settings = settings
        self.fetcher = fetcher or ImageFetcher(settings)
        self.metrics = metrics or Metrics()
        self.url_index = UrlIndex(settings.url_ttl)
        self.clicks = ClickMemory()
        self._downloads: SingleFlight[tuple[ImageEmbedding, bool]] = SingleFlight()
        self.projects = Projects()
        self.priority = Priority()
        self.precompute = PrecomputeQueue(
            self.embedding,
            self._schema_of,
            self.metrics,
            is_cached=self.is_cached,
            priority=self.priority,
            max_seconds=settings.precompute_max_seconds,
        )
        self.api = LabelStudioAPI(
            settings.label_studio_url,
            settings.label_studio_api_key,
            self.fetcher.client,
            settings.fetch_timeout,
        )
        self._init_serving(predictor, model_version, store_namespace or model_version, checkpoint)
        self.preannotator = Preannotator(self._post if self.api.configured else None, self.metrics)
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
        m.gauge(
            "edgesam_refine_mask_input_total",
            "Clicks decoded with the previous answer's logits as mask input.",
            lambda: self.clicks.hits,
        )
        m.gauge(
            "edgesam_precompute_pending",
            "Embeddings queued for precomputation.",
            lambda: self.precompute.pending,
        )

    def close(self) -> None:
        self.fits.close()
        self.preannotator.close()
        self.precompute.close()
        self.fetcher.close()

    # --- /setup -------------------------------------------------------------------------------------
    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        schema = body.get("schema")
        if not isinstance(schema, str):
            raise BadRequest("/setup needs 'schema' (the project's label config XML)")
        try:
            config = parse_label_config(schema)
        except LabelConfigError as exc:
            raise BadRequest(f"label config: {exc}") from None
        extra = parse_extra(body.get("extra_params"))
        if "default_label" in extra:
            self._default_label(config, extra)  # validates it against the config
        self.select_version(extra)
        self.fetcher.set_fallback(body.get("hostname"), body.get("access_token"))
        key = project_key(body.get("project"))
        if key is not None:
            self.projects.remember(key, ProjectState(schema=schema, extra=extra))
        return {"model_version": self.model_version}

    # --- images --------------------------------------------------------------------------------------
    def is_cached(self, url: Any, task_id: int | None) -> bool:
        """Whether the embedding of the image at ``url`` is in the cache (no download, no encode)."""
        try:
            digest = self.url_index.get(self.fetcher.identity(url, task_id))
        except BadRequest:
            return False
        return digest is not None and digest in self.cache

    def embedding(
        self, url: Any, task_id: int | None, serving: Serving | None = None
    ) -> tuple[ImageEmbedding, bool]:
        """``(embedding, cache_hit)`` of the task image at ``url`` by ``serving`` (default: the current
        version's encoder); one download/encode per image and encoder."""
        s = serving or self.serving
        ident = self.fetcher.identity(url, task_id)
        digest = self.url_index.get(ident)
        if digest is not None:
            emb = s.cache.get(digest)
            if emb is not None:
                self.metrics.cache_hits.inc()
                return emb, True

        def load() -> tuple[ImageEmbedding, bool]:
            t0 = time.perf_counter()
            data = self.fetcher.fetch(url, task_id)
            self.metrics.fetch_seconds.observe(time.perf_counter() - t0)
            dig = hashlib.sha256(data).hexdigest()

            def encode() -> ImageEmbedding:
                if s.store is not None:
                    stored = s.store.get(dig)
                    self.metrics.store.inc("hit" if stored is not None else "miss")
                    if stored is not None:
                        return stored
                image = decode_image(data, self.settings.max_image_pixels)
                t1 = time.perf_counter()
                emb = s.predictor.encode(image)
                self.metrics.encode_seconds.observe(time.perf_counter() - t1)
                if s.store is not None:
                    s.store.put(dig, emb)
                return emb

            emb, hit = s.cache.get_or_compute(dig, encode)
            self.url_index.put(ident, dig)
            return emb, hit

        (emb, hit), shared = self._downloads.do((s.encoder_id, ident), load)
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
        state = self.projects.get(project_key(body.get("project")))
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
        serving = self.serving  # one version for the whole request (see .serving)
        emb, _ = self.embedding(url, tid, serving)
        t0 = time.perf_counter()
        scope = (serving.version, self.fetcher.identity(url, tid))
        regions, score = self._prompt_regions(emb, raw, label, config, state, serving, scope)
        self.metrics.decode_seconds.observe(time.perf_counter() - t0, "interactive")
        self.metrics.predictions.inc("interactive")
        return {"result": regions, "score": round(score, 6), "model_version": serving.version}

    def _prompt_regions(
        self,
        emb: ImageEmbedding,
        raw: Any,
        label: str,
        config: LabelConfig,
        state: ProjectState | None,
        serving: Serving,
        scope: tuple[str, str] | None = None,
    ) -> tuple[list[dict[str, Any]], float]:
        """One prompt (a :class:`.context.RawPrompt`) → its mask's regions on the label's outputs, by
        ``serving``'s predictor (the one that computed ``emb``). With ``scope`` (version, image) the
        answer is remembered and a prompt that extends a remembered one refines it (:mod:`.refine`)."""
        prompt = to_pixels(raw, emb.original_hw)
        mode: MaskChoice = option(state, "mask_choice", self.settings.mask_choice)
        k, kind = interactive.choose_mask(mode, raw.n_points, prompt.box is not None)
        pts, labels, box = prompt.point_coords, prompt.point_labels, prompt.box
        remember = (
            scope is not None and self.settings.refine_with_mask and serving.predictor.supports_mask_input
        )
        prev = self.clicks.previous(scope, pts, labels, box) if remember else None
        try:
            mask, score, low = interactive.predict_mask(
                serving.predictor, emb, pts, labels, box, k, kind, prev
            )
        except PromptError as exc:
            raise Unprocessable(f"invalid prompt: {exc}") from None
        if remember:
            self.clicks.put(scope, pts, labels, box, low)
        if prompt.output_rotation:
            mask = rotate_mask(mask, prompt.output_rotation)
        regions = mask_regions(
            mask,
            config.outputs_for(label),
            config.image.name,
            label,
            score,
            prompt.image_rotation,
            self.settings.polygon_tolerance,
        )
        return regions, score

    def automatic_masks(
        self, emb: ImageEmbedding, state: ProjectState | None = None, serving: Serving | None = None
    ) -> list[dict[str, Any]]:
        """See :func:`.batch.automatic_masks` (records capped at max_regions, bool segmentations)."""
        return batch.automatic_masks((serving or self.serving).predictor, self.settings, emb, state)

    def _batch(self, tasks: list[Any], config: LabelConfig, state: ProjectState | None) -> list[Any]:
        if not self.settings.batch:
            return [[] for _ in tasks]  # interactive only (EDGESAM_BATCH=false): no predictions stored

        def answer(task: Any, i: int, wait: float) -> tuple[Any, bool]:
            job = self.preannotation_job(task, i, config, state)
            if job is None:
                return [], False
            tid = task.get("id") if isinstance(task.get("id"), int) else None
            result = self.preannotator.answer(tid, job[0], job[1], wait)
            return result, result == [] and self.preannotator.running(job[0])

        return batch.run_batch(tasks, self.settings, self.metrics, answer)

    def _post(self, task_id: int, prediction: dict[str, Any]) -> None:
        self.api.post_prediction(task_id, prediction)

    # --- /webhook ------------------------------------------------------------------------------------
    def webhook(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        action = body.get("action")
        if isinstance(action, str):
            answer = self.training_webhook(action, body)
            if answer is not None:
                return answer
        if action == "TASKS_CREATED":
            n = self.precompute.queue(body) if self.settings.precompute_on_webhook else 0
            m = self._preannotate_created(body) if self.settings.batch else 0
            return 200, {"status": "ok", "action": action, "precompute_queued": n, "preannotate_queued": m}
        if isinstance(action, str) and action:
            return 200, {"status": "Unknown event", "action": action}
        raise BadRequest("webhook payload has no 'action'")

    @property
    def _pending(self) -> int:
        """Embeddings queued for precomputation (not yet done)."""
        return self.precompute.pending

    def _schema_of(self, project: Any) -> str | None:
        st = self.projects.get(project_key(project))
        return st.schema if st else None
