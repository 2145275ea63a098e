"""Background pre-annotation: a context-less ``/predict`` (opening a task, "Retrieve Predictions") never
waits on the model. It answers at once from a result store, and schedules what is missing.

Label Studio sends such a request when a task opens (``show_collab_predictions``, on by default) and
renders the task only after the answer; it sends it twice at the same moment. So:

* :meth:`Preannotator.answer` returns the stored result for ``(task, job key)`` if one is ready and not
  yet handed to Label Studio, else ``[]`` (Label Studio stores nothing), and starts the job when none
  runs. ``job key`` = image identity + mode + settings + prompts (:func:`job_key`), so duplicate
  requests for the same image and settings share one computation (single flight).
* A job runs on one background worker (bounded queue). When it finishes, every task that asked for it
  and has not received it gets it through ``POST /api/predictions`` with the model version (when
  Label Studio's URL + key are configured); otherwise the next context-less ``/predict`` returns it.
* Each ``(task, job key)`` result is handed over at most once (by the answer or by the API), so one
  open stores at most one prediction; Label Studio then skips the task (it has a prediction of the
  current model version).

``wait`` (``EDGESAM_PREANNOTATE_WAIT``, default 0) lets a request wait that many seconds for the
result before answering, for scripts that want predictions in the response.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import budget as _budget
from .errors import BackendError
from .metrics import Metrics

log = logging.getLogger("edgesam_backend.labelstudio")

MAX_RESULTS = 512
MAX_DELIVERED = 100_000


def job_key(*parts: Any) -> str:
    """A stable hash of the job's inputs (image identity, mode, settings, prompts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class _Flight:
    waiters: set[int] = field(default_factory=set)  # tasks to hand the result to through the API
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)  # nobody wants the result any more
    watching: int = 0  # requests waiting for it in their response


class Preannotator:
    """Result store + background jobs (see the module docstring).

    Args:
        post: ``post(task_id, prediction) -> None`` stores a prediction in Label Studio (raises on
            failure), or None when Label Studio's API is not configured.
        metrics: counters ``edgesam_preannotations_total{outcome}``.
        max_pending: jobs queued or running at most; more are dropped (retried on the next request).
    """

    def __init__(
        self,
        post: Callable[[int, dict[str, Any]], None] | None,
        metrics: Metrics,
        max_pending: int = 256,
    ) -> None:
        self._post = post
        self._metrics = metrics
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgesam-preannotate")
        self._lock = threading.Lock()
        self._results: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._flights: dict[str, _Flight] = {}
        self._delivered: OrderedDict[tuple[int, str], None] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._flights)

    def running(self, key: str) -> bool:
        """Whether the job for ``key`` is queued or running."""
        with self._lock:
            return key in self._flights

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _mark(self, task_id: int, key: str) -> None:
        self._delivered[(task_id, key)] = None
        while len(self._delivered) > MAX_DELIVERED:
            self._delivered.popitem(last=False)

    def answer(
        self,
        task_id: int | None,
        key: str,
        compute: Callable[[], dict[str, Any] | None],
        wait: float = 0.0,
    ) -> dict[str, Any] | list[Any]:
        """The prediction to return now for this task (``[]``: nothing yet or already handed over);
        starts ``compute`` in the background when nothing is stored or running for ``key``."""
        with self._lock:
            if task_id is not None and (task_id, key) in self._delivered:
                return []
            if key in self._results:
                self._results.move_to_end(key)
                return self._take(task_id, key)
            flight = self._flights.get(key)
            if flight is None:
                if len(self._flights) >= self.max_pending:
                    self._metrics.preannotations.inc("dropped")
                    return []
                flight = self._flights[key] = _Flight()
                self._pool.submit(self._run, key, compute)
                self._metrics.preannotations.inc("scheduled")
            else:
                self._metrics.preannotations.inc("shared")
        if wait > 0:
            self._wait(flight, wait)
        with self._lock:
            if task_id is not None and (task_id, key) in self._delivered:
                return []
            if key in self._results:
                return self._take(task_id, key)
            if task_id is not None and not flight.done.is_set():
                flight.waiters.add(task_id)  # handed over through the API when the job ends
        return []

    def _wait(self, flight: _Flight, wait: float) -> None:
        """Wait for the flight; a request abandoned by its client (:func:`.budget.cancelled`) stops
        waiting, and stops the job too when nobody else waits for it or expects it through the API."""
        with self._lock:
            flight.watching += 1
        try:
            deadline = time.monotonic() + wait
            while not flight.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline:
                    return
                if _budget.cancelled():
                    with self._lock:
                        if flight.watching == 1 and not flight.waiters:
                            flight.stop.set()
                    return
        finally:
            with self._lock:
                flight.watching -= 1

    def _take(self, task_id: int | None, key: str) -> dict[str, Any] | list[Any]:
        result = self._results[key]
        if result is None:
            return []
        if task_id is not None:
            self._mark(task_id, key)
        self._metrics.preannotations.inc("answered")
        return result

    def _run(self, key: str, compute: Callable[[], dict[str, Any] | None]) -> None:
        result: dict[str, Any] | None = None
        ok = False
        with self._lock:
            flight = self._flights[key]
        try:
            with _budget.cancel_on(flight.stop):
                result = compute()
            ok = True
        except BackendError as exc:
            log.info("pre-annotation skipped: %s", exc.message)
            self._metrics.preannotations.inc("failed")
        except Exception:  # a background job must never die silently without a trace
            log.exception("pre-annotation failed")
            self._metrics.preannotations.inc("failed")
        with self._lock:
            flight = self._flights.pop(key)
            if ok:
                self._results[key] = result
                while len(self._results) > MAX_RESULTS:
                    self._results.popitem(last=False)
            send = sorted(flight.waiters) if (ok and result is not None and self._post) else []
            for tid in send:
                self._mark(tid, key)  # reserved: a concurrent /predict answers [] meanwhile
            flight.done.set()
        for tid in send:
            try:
                assert self._post is not None and result is not None
                self._post(tid, result)
                self._metrics.preannotations.inc("posted")
            except Exception as exc:
                log.warning("could not store the prediction of task %s in Label Studio: %s", tid, exc)
                self._metrics.preannotations.inc("post_failed")
                with self._lock:
                    self._delivered.pop((tid, key), None)  # the next /predict returns it
