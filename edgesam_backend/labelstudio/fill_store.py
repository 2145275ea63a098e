"""Fill the persistent embedding store ahead of time (``edgesam precompute``): every image of a
folder, or every task image of a Label Studio project (through its API, with the backend's image
policy and credentials). Images already stored (same bytes, same encoder) are not encoded again."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..formats.imagefiles import is_image_file
from ..runtime.base import BasePredictor
from ..runtime.embedding_store import EmbeddingStore
from .config import parse_label_config
from .errors import BackendError
from .images import ImageFetcher, decode_image
from .lsapi import LabelStudioAPI

log = logging.getLogger("edgesam_backend.labelstudio")


@dataclass
class FillReport:
    """Counts of one run, and the encoder time."""

    encoded: int = 0
    cached: int = 0
    failed: int = 0
    encode_seconds: float = 0.0


def _fill(
    sources: Iterable[tuple[str, Callable[[], bytes]]],
    store: EmbeddingStore,
    predictor: BasePredictor,
    max_pixels: int,
) -> FillReport:
    rep = FillReport()
    for name, read in sources:
        try:
            data = read()
            digest = hashlib.sha256(data).hexdigest()
            if store.path(digest).is_file():
                rep.cached += 1
                continue
            image = decode_image(data, max_pixels)
            t0 = time.perf_counter()
            store.put(digest, predictor.encode(image))
            rep.encode_seconds += time.perf_counter() - t0
            rep.encoded += 1
        except (BackendError, OSError, ValueError) as exc:
            log.warning("precompute: %s skipped: %s", name, getattr(exc, "message", exc))
            rep.failed += 1
    return rep


def fill_from_folder(
    folder: str | Path, store: EmbeddingStore, predictor: BasePredictor, max_pixels: int = 64_000_000
) -> FillReport:
    """Every image file under ``folder`` (recursively, sorted)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_image_file(p))
    return _fill(((str(p), p.read_bytes) for p in files), store, predictor, max_pixels)


def fill_from_project(
    api: LabelStudioAPI,
    fetcher: ImageFetcher,
    project: int,
    store: EmbeddingStore,
    predictor: BasePredictor,
    max_pixels: int = 64_000_000,
) -> FillReport:
    """Every task image of a Label Studio project (the ``<Image value="$key">`` of its label config)."""
    config = parse_label_config(api.project(project)["label_config"])
    key = config.image.value_key

    def sources() -> Iterable[tuple[str, Callable[[], bytes]]]:
        for task in api.tasks(project):
            url = (task.get("data") or {}).get(key)
            tid = task.get("id") if isinstance(task.get("id"), int) else None
            if isinstance(url, str):
                yield f"task {tid}", (lambda u=url, t=tid: fetcher.fetch(u, t))

    return _fill(sources(), store, predictor, max_pixels)
