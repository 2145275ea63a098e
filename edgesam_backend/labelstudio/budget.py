"""Cooperative stopping of one request's work: a cancel event (set when the client went away) and a
deadline (the batch time budget), held in context variables of the worker thread that runs the request,
so the automatic mask generator can check them between decoder batches without every call in between
passing them along (:func:`should_stop` is its ``should_stop`` hook)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar

_CANCEL: ContextVar[threading.Event | None] = ContextVar("edgesam_cancel", default=None)
_DEADLINE: ContextVar[float | None] = ContextVar("edgesam_deadline", default=None)


@contextlib.contextmanager
def cancel_on(event: threading.Event) -> Iterator[None]:
    """Work in this block (this thread's context) stops once ``event`` is set."""
    token = _CANCEL.set(event)
    try:
        yield
    finally:
        _CANCEL.reset(token)


@contextlib.contextmanager
def deadline(at: float | None) -> Iterator[None]:
    """Work in this block stops at ``time.monotonic() >= at`` (``None``: no deadline)."""
    token = _DEADLINE.set(at)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def cancelled() -> bool:
    """Whether the request was abandoned by its client."""
    ev = _CANCEL.get()
    return ev is not None and ev.is_set()


def expired() -> bool:
    """Whether the current deadline has passed."""
    at = _DEADLINE.get()
    return at is not None and time.monotonic() >= at


def should_stop() -> bool:
    """``cancelled() or expired()``."""
    return cancelled() or expired()
