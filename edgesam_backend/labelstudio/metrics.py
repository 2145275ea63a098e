"""A minimal, thread-safe Prometheus registry (text exposition format 0.0.4), no dependency.

Counters and histograms with labels; gauges are read from callbacks at scrape time.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    f = float(v)
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)


class Counter:
    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = tuple(str(v) for v in labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(tuple(str(v) for v in labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items())
        lines += [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]
        return lines


class Histogram:
    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._data: dict[tuple[str, ...], list] = {}  # key -> [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        key = tuple(str(v) for v in labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            d = self._data.get(key)
            if d is None:
                d = self._data[key] = [0] * len(self.buckets) + [0.0, 0]
            if i < len(self.buckets):
                d[i] += 1
            d[-2] += value
            d[-1] += 1

    def count(self, *labels: str) -> int:
        with self._lock:
            d = self._data.get(tuple(str(v) for v in labels))
            return int(d[-1]) if d else 0

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        for key, d in items:
            acc = 0
            for b, n in zip(self.buckets, d[: len(self.buckets)], strict=True):
                acc += n
                le = 'le="' + _fmt(b) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {acc}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, inf)} {d[-1]}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(d[-2])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {d[-1]}")
        return lines


class Gauge:
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def render(self) -> list[str]:
        try:
            v = float(self.read())
        except Exception:  # a gauge must never break the scrape
            return []
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {_fmt(v)}"]


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Metrics:
    """The backend's metrics."""

    def __init__(self) -> None:
        self.requests = Counter(
            "edgesam_http_requests_total",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
        )
        self.latency = Histogram(
            "edgesam_http_request_duration_seconds", "HTTP request latency by route.", ("route", "method")
        )
        self.predictions = Counter(
            "edgesam_predictions_total", "Tasks predicted, by mode (interactive, batch).", ("mode",)
        )
        self.prediction_errors = Counter(
            "edgesam_prediction_errors_total",
            "Failed predictions by mode and HTTP status.",
            ("mode", "status"),
        )
        self.cache_hits = Counter(
            "edgesam_embedding_cache_hits_total",
            "Image embeddings served from the cache (incl. shared flights).",
        )
        self.cache_misses = Counter(
            "edgesam_embedding_cache_misses_total", "Image embeddings computed (encoder runs)."
        )
        self.encode_seconds = Histogram("edgesam_encode_seconds", "Image encoder latency.")
        self.decode_seconds = Histogram(
            "edgesam_decode_seconds", "Prompt decoding + mask post-processing latency.", ("mode",)
        )
        self.fetch_seconds = Histogram("edgesam_image_fetch_seconds", "Image download/read latency.")
        self.batch_deferred = Counter(
            "edgesam_batch_deferred_tasks_total", "Batch tasks left without a prediction by the time budget."
        )
        self.precompute = Counter(
            "edgesam_precompute_total", "Embeddings precomputed from webhooks, by outcome.", ("outcome",)
        )
        self.preannotations = Counter(
            "edgesam_preannotations_total",
            "Background pre-annotation jobs and hand-overs, by outcome.",
            ("outcome",),
        )
        self.store = Counter(
            "edgesam_embedding_store_total", "Persistent embedding store lookups, by outcome.", ("outcome",)
        )
        self.training = Counter("edgesam_training_total", "Fine-tuning jobs, by outcome.", ("outcome",))
        self._gauges: list[Gauge] = [
            Gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss_bytes)
        ]

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._gauges.append(Gauge(name, help, read))

    def render(self) -> str:
        lines: list[str] = []
        for m in (
            self.requests,
            self.latency,
            self.predictions,
            self.prediction_errors,
            self.cache_hits,
            self.cache_misses,
            self.encode_seconds,
            self.decode_seconds,
            self.fetch_seconds,
            self.batch_deferred,
            self.precompute,
            self.preannotations,
            self.store,
            self.training,
        ):
            lines += m.render()
        for g in self._gauges:
            lines += g.render()
        return "\n".join(lines) + "\n"
