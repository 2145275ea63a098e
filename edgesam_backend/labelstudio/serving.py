"""Which model the backend serves, and swapping it without dropping requests (mixed into
:class:`.model.EdgeSAMBackend`).

:class:`Serving` bundles what one model version needs — predictor, ``model_version``, its embedding
cache and its namespace in the persistent store — as one immutable value. A request reads
``self.serving`` once and uses that value to the end, so a swap (a fit finished, a rollback through
``extra_params.model_version``) never mixes an embedding of one encoder with another's decoder, and
requests already running finish on the model they started with. Versions whose encoder is the same
file (a fit with ``freeze: encoder``, the default) share their embeddings: cache and store are keyed
by the encoder's sha256. Which version serves at start: :mod:`.versions`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..runtime.base import BasePredictor, ImageEmbedding
from ..runtime.embedding_store import EmbeddingStore
from .cache import EmbeddingLRU
from .errors import Unprocessable
from .fit import FitJob, FitJobs, Served
from .versions import BASE, VersionError, VersionRegistry

log = logging.getLogger("edgesam_backend.labelstudio")


def _embedding_nbytes(e: ImageEmbedding) -> int:
    return int(e.embeddings.nbytes) + 1024


@dataclass(frozen=True)
class Serving:
    """One servable model version (see the module docstring)."""

    version: str
    predictor: BasePredictor
    cache: EmbeddingLRU[ImageEmbedding]
    store: EmbeddingStore | None
    encoder_id: str
    checkpoint: str | None


class ServedModels:
    """Needs the backend's ``settings``, ``metrics``, ``api`` and ``fetcher``; call
    :meth:`_init_serving` from ``__init__``."""

    settings: Any
    metrics: Any
    api: Any
    fetcher: Any

    def _init_serving(
        self, predictor: BasePredictor, version: str, encoder_id: str, checkpoint: str | None
    ) -> None:
        self._swap_lock = threading.Lock()
        self._base = self._make_serving(version, predictor, encoder_id, checkpoint, None)
        self._loaded: dict[str, Serving] = {version: self._base}
        self.serving = self._base
        self.registry = VersionRegistry(self.settings.resolved_train_dir, version)
        self.fits = FitJobs(
            self.settings, self.api, self.fetcher, self.registry, self.metrics, self._served, self.use_version
        )
        start = self.settings.serve_version or self.registry.active
        if start != BASE:
            try:
                self.use_version(start, persist=False)
            except VersionError as exc:
                raise VersionError(f"EDGESAM_SERVE_VERSION / {self.registry.train_dir}: {exc}") from None

    def _make_serving(
        self,
        version: str,
        predictor: BasePredictor,
        encoder_id: str,
        checkpoint: str | None,
        share: Serving | None,
    ) -> Serving:
        s = self.settings
        if share is not None and share.encoder_id == encoder_id:
            cache, store = share.cache, share.store  # same encoder file: the same embeddings
        else:
            cache = EmbeddingLRU(int(s.cache_mb * 1024 * 1024), _embedding_nbytes)
            store = None
            if s.embedding_store is not None:
                ns = "".join(c for c in encoder_id if c.isalnum() or c in "-_") or "model"
                store = EmbeddingStore(s.embedding_store, int(s.embedding_store_mb * 1024 * 1024), ns)
        return Serving(version, predictor, cache, store, encoder_id, checkpoint)

    # what the rest of the backend reads (the current version's)
    @property
    def predictor(self) -> BasePredictor:
        return self.serving.predictor

    @property
    def model_version(self) -> str:
        return self.serving.version

    @property
    def cache(self) -> EmbeddingLRU[ImageEmbedding]:
        return self.serving.cache

    @property
    def store(self) -> EmbeddingStore | None:
        return self.serving.store

    def version_names(self) -> list[str]:
        """``/versions``: the base model first, then the fitted ones."""
        return self.registry.names()

    def _served(self) -> Served:
        s = self.serving
        return Served(s.version, s.predictor, s.checkpoint)

    def use_version(self, name: str, persist: bool = True) -> None:
        """Serve ``name`` (``base``, the base version or a fitted one) from now on; raises
        :class:`.versions.VersionError` for an unknown one. ``persist``: also serve it after a restart."""
        from ..engine import onnx_predictor
        from ..runtime.resolve import resolve_model

        fv = self.registry.get(name)
        with self._swap_lock:
            key = self._base.version if fv is None else fv.version
            nxt = self._loaded.get(key)
            if nxt is None:
                assert fv is not None
                model = resolve_model(onnx_dir=fv.onnx_dir, device=self.settings.device)
                predictor = onnx_predictor(model, threads=self.settings.intra_op_threads)
                nxt = self._make_serving(
                    fv.version, predictor, model.encoder_sha256, fv.checkpoint, self.serving
                )
                self._loaded[fv.version] = nxt
            prev, self.serving = self.serving, nxt
            for v, other in list(self._loaded.items()):  # keep the base and the served one loaded
                if other is not self._base and other is not nxt:
                    del self._loaded[v]
            if prev.cache is not nxt.cache:
                prev.cache.clear()
        if persist:
            self.registry.activate(key)
        if prev is not nxt:
            log.info("serving model version %s (was %s)", nxt.version, prev.version)

    def select_version(self, extra: dict[str, Any]) -> None:
        """``extra_params.model_version`` of a /setup: switch to it (an env pin wins); 422 if unknown."""
        want = extra.get("model_version")
        if not want or want in (self.serving.version, BASE if self.serving is self._base else None):
            return
        if self.settings.serve_version:
            log.warning(
                "extra_params.model_version=%s ignored: EDGESAM_SERVE_VERSION=%s pins the served version",
                want,
                self.settings.serve_version,
            )
            return
        try:
            self.use_version(str(want))
        except VersionError as exc:
            raise Unprocessable(f"extra_params.model_version: {exc}") from None

    def training_webhook(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """START_TRAINING → a fit (201); ANNOTATION_CREATED/UPDATED → counted toward
        ``EDGESAM_TRAIN_EVERY`` (when set); None for other actions."""
        project = body.get("project")
        pid = project.get("id") if isinstance(project, dict) else project
        pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        if action == "START_TRAINING":
            if pid is None:
                raise Unprocessable(
                    "START_TRAINING without project.id: cannot tell which annotations to learn from"
                )
            job = self.fits.start(pid, action)
            return 201, {"status": "ok", "action": action, "job": job.id, "tasks": job.tasks}
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED") and self.settings.train_every:
            started: FitJob | None = self.fits.on_annotation(pid)
            return 200, {"status": "ok", "action": action, "fit_started": started.id if started else None}
        return None
