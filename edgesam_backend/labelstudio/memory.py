"""Give freed heap memory back to the OS after large requests.

glibc keeps freed blocks of big numpy / onnxruntime buffers in its arenas (one per thread that
allocated), so the server's RSS stays at its peak (~1 GB after a soak) though nothing holds the memory.
:class:`Trimmer` calls ``malloc_trim(0)`` after a request (at most every ``min_interval`` s) and caps the
number of arenas; elsewhere (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger("edgesam_backend.labelstudio")

M_ARENA_MAX = -8


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


class Trimmer:
    """``malloc_trim`` after large requests; ``trims`` counts the calls made."""

    def __init__(self, min_interval: float = 1.0, arena_max: int | None = 4) -> None:
        self.min_interval = min_interval
        self.trims = 0
        self._last = 0.0
        self._lock = threading.Lock()
        self._libc = _libc()
        self._timer: threading.Timer | None = None
        if self._libc is not None and arena_max:
            self._libc.mallopt(M_ARENA_MAX, int(arena_max))

    def _deferred(self) -> None:
        with self._lock:
            self._timer = None
        self.trim(force=True)

    @property
    def available(self) -> bool:
        return self._libc is not None

    def trim(self, force: bool = False) -> bool:
        """Return freed memory to the OS now (unless one ran less than ``min_interval`` s ago)."""
        if self._libc is None:
            return False
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_interval:
                if self._timer is None:  # trim once more after the burst, so idle memory is returned
                    self._timer = threading.Timer(self.min_interval, self._deferred)
                    self._timer.daemon = True
                    self._timer.start()
                return False
            self._last = now
            self.trims += 1
        self._libc.malloc_trim(0)
        return True
