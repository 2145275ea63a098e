"""The /webhook precompute queue: on ``TASKS_CREATED`` the new tasks' images are fetched and encoded
in the background (one worker), so the first click finds the embedding cached.

The queue is bounded by work: an image is queued only while the estimated encoding time of everything
pending (pending images x the measured seconds per image) stays under ``max_seconds``; images already
in the cache or already queued are skipped; each job waits until no interactive request is in flight
(:class:`~.priority.Priority`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .config import LabelConfigError, parse_label_config
from .errors import BackendError
from .metrics import Metrics
from .priority import Priority

log = logging.getLogger("edgesam_backend.labelstudio")

MAX_PENDING_PRECOMPUTE = 256


class PrecomputeQueue:
    """Background embedding of task images.

    Args:
        embed: ``embed(url, task_id) -> (embedding, cache_hit)``, the backend's cached image encoder.
        schema_of: ``schema_of(project_id) -> label config XML or None`` (from /setup).
    """

    def __init__(
        self,
        embed: Callable[[str, int | None], tuple[Any, bool]],
        schema_of: Callable[[Any], str | None],
        metrics: Metrics,
        max_pending: int = MAX_PENDING_PRECOMPUTE,
        *,
        is_cached: Callable[[str, int | None], bool] | None = None,
        priority: Priority | None = None,
        max_seconds: float = 120.0,
    ) -> None:
        self._embed = embed
        self._schema_of = schema_of
        self._metrics = metrics
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesam-precompute")
        self._lock = threading.Lock()
        self.pending = 0
        self._is_cached = is_cached
        self.priority = priority
        self.max_seconds = max_seconds
        self.seconds_per_image: float | None = None  # measured (EMA) once an image was encoded
        self._queued: set[str] = set()
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def queue(self, body: dict[str, Any]) -> int:
        """Queue the images of a ``TASKS_CREATED`` payload; returns how many were queued."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            return 0
        project = body.get("project")
        schema = project.get("label_config") if isinstance(project, dict) else None
        if not isinstance(schema, str):
            schema = self._schema_of(project.get("id") if isinstance(project, dict) else project)
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
            tid = task.get("id") if isinstance(task.get("id"), int) else None
            if self._is_cached is not None and self._is_cached(url, tid):
                self._metrics.precompute.inc("cached")
                continue
            with self._lock:
                if url in self._queued:
                    continue
                work = (self.pending + 1) * (self.seconds_per_image or 0.0)
                if self.pending >= self.max_pending or work > self.max_seconds:
                    self._metrics.precompute.inc("dropped")
                    continue
                self.pending += 1
                self._queued.add(url)
            self._pool.submit(self._one, url, tid)
            queued += 1
        return queued

    def _one(self, url: str, task_id: int | None) -> None:
        try:
            if self.priority is not None:
                self.priority.wait_idle(self._closed)
            t0 = time.perf_counter()
            _, hit = self._embed(url, task_id)
            if not hit:
                dt = time.perf_counter() - t0
                with self._lock:
                    old = self.seconds_per_image
                    self.seconds_per_image = dt if old is None else 0.7 * old + 0.3 * dt
            self._metrics.precompute.inc("cached" if hit else "encoded")
        except BackendError as exc:
            log.info("precompute for task %s skipped: %s", task_id, exc.message)
            self._metrics.precompute.inc("failed")
        except Exception:  # a background job must never die silently without a trace
            log.exception("precompute for task %s failed", task_id)
            self._metrics.precompute.inc("failed")
        finally:
            with self._lock:
                self.pending -= 1
                self._queued.discard(url)
