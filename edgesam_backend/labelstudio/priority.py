"""Interactive requests before background work: precompute waits while a click is being answered (and
for ``quiet`` seconds after the last one), so a webhook flood cannot slow the annotator down."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator


class Priority:
    """Counts interactive requests in flight; :meth:`wait_idle` blocks background work meanwhile."""

    def __init__(self, quiet: float = 0.3) -> None:
        self.quiet = quiet
        self._cond = threading.Condition()
        self._active = 0
        self._last = 0.0

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        """Mark an interactive request in flight for the duration of the block."""
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._last = time.monotonic()
                self._cond.notify_all()

    def wait_idle(self, stop: threading.Event | None = None) -> None:
        """Return once no interactive request is in flight and none ended in the last ``quiet`` s
        (or when ``stop`` is set)."""
        with self._cond:
            while not (stop is not None and stop.is_set()):
                if self._active:
                    self._cond.wait(0.1)
                    continue
                left = self._last + self.quiet - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)
