"""Embedding cache: LRU bounded by bytes, keyed by image content, with single-flight computation.

Two levels:

* :class:`EmbeddingLRU` maps an image's *content* digest (sha256 of its bytes) to its
  :class:`~edgesam_backend.runtime.base.ImageEmbedding` (4 MiB each), evicting least recently used
  entries beyond ``max_bytes``;
* :class:`UrlIndex` maps an image's *identity* (Label Studio URL / storage URI) to the digest of the
  bytes last fetched from it, for ``ttl`` seconds, so a click on a cached image needs no download.
  After the TTL the bytes are fetched again: unchanged content still hits the embedding cache.

:class:`SingleFlight` makes concurrent requests for the same key share one computation (one
download, one encode), so eight annotators opening the same image encode it once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Call(Generic[T]):
    done: threading.Event = field(default_factory=threading.Event)
    value: T | None = None
    error: BaseException | None = None


class SingleFlight(Generic[T]):
    """``do(key, fn)``: the first caller runs ``fn``; concurrent callers with the same key wait for
    and share its result (or its exception). Nothing is remembered once the call finishes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Hashable, _Call[T]] = {}

    def do(self, key: Hashable, fn: Callable[[], T]) -> tuple[T, bool]:
        """Returns ``(value, shared)``: ``shared`` is True for callers that waited on another's call."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.value, True  # type: ignore[return-value]
        try:
            call.value = fn()
            return call.value, False
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                self._calls.pop(key, None)
            call.done.set()


class EmbeddingLRU(Generic[T]):
    """Thread-safe LRU of ``key -> value`` bounded by the values' total ``size(value)`` in bytes."""

    def __init__(self, max_bytes: int, size: Callable[[T], int]) -> None:
        self.max_bytes = int(max_bytes)
        self._size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[T, int]] = OrderedDict()
        self._bytes = 0
        self._flight: SingleFlight[T] = SingleFlight()
        self.hits = 0
        self.misses = 0
        self.shared = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> T | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: T) -> None:
        n = int(self._size(value))
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if n > self.max_bytes:
                return  # larger than the whole budget: not cached
            self._items[key] = (value, n)
            self._bytes += n
            while self._bytes > self.max_bytes and self._items:
                _, (_, m) = self._items.popitem(last=False)
                self._bytes -= m
                self.evictions += 1

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, bool]:
        """``(value, hit)``; on a miss, ``compute`` runs once however many threads ask at once."""
        v = self.get(key)
        if v is not None:
            return v, True

        def run() -> T:
            again = self.get(key)  # computed by a flight that ended between get() and do()
            if again is not None:
                return again
            with self._lock:
                self.misses += 1
            value = compute()
            self.put(key, value)
            return value

        value, shared = self._flight.do(key, run)
        if shared:
            with self._lock:
                self.shared += 1
        return value, shared

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


class UrlIndex:
    """``identity -> (digest, extra)`` remembered for ``ttl`` seconds (at most ``max_items``)."""

    def __init__(self, ttl: float, max_items: int = 10_000) -> None:
        self.ttl = float(ttl)
        self.max_items = max_items
        self._lock = threading.Lock()
        self._items: OrderedDict[Hashable, tuple[float, str]] = OrderedDict()

    def get(self, identity: Hashable) -> str | None:
        with self._lock:
            item = self._items.get(identity)
            if item is None:
                return None
            expires, digest = item
            if time.monotonic() >= expires:
                del self._items[identity]
                return None
            self._items.move_to_end(identity)
            return digest

    def put(self, identity: Hashable, digest: str) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            self._items[identity] = (time.monotonic() + self.ttl, digest)
            self._items.move_to_end(identity)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
