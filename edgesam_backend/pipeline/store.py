"""The result store: one JSON file (or object) per image, written whole, keyed by content + config.

``output_dir`` is a local directory or an fsspec URL (``s3://bucket/run``; see :mod:`.storage`).
Layout below ``<output_dir>/.edgesam/``::

    results/<key[:2]>/<key>.json   one ImageResult (on disk: a temp file renamed into place; in object
                                   storage: one PUT of the whole object, no rename needed)
    failures/<item>.json           the last failure of an item (removed when it later succeeds)
    run.json                       what the last run was (pipeline, config hash, model files)
    lock                           held (flock) while a run is active (local directories only: object
                                   stores have no lock, so do not start two runs on one URL)

A key is ``sha256(format, image bytes sha256, results-affecting config hash, prompt inputs)``: a re-run
skips every image whose key has a file; a changed image, prompt or model gets a new key. A process
killed at any point leaves either a complete result file or none (plus, on disk, at most a stray temp
file, removed on the next run), so nothing is lost or duplicated; an object store never shows a partly
written object, so the same holds there.
"""

from __future__ import annotations

import json
import os
import posixpath
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text
from . import storage
from .base import PipelineError
from .records import ImageItem, ImageResult, sha256_text

STORE_DIR = ".edgesam"


class ResultStore:
    """Per-image results and failures of one output directory or URL."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.url = storage.is_url(output_dir)
        self.output_dir: str | Path = (
            str(output_dir).rstrip("/") if self.url else Path(storage.local_path(output_dir))
        )
        self.root = storage.join(self.output_dir, STORE_DIR)
        self.results_dir = storage.join(self.root, "results")
        self.failures_dir = storage.join(self.root, "failures")
        self._lock_fd: int | None = None

    # --- run lock ----------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the directory lock (one run per output directory) and remove stray temp files.
        Object stores have neither locks nor temp files: nothing to do."""
        if self.url:
            return
        import fcntl

        root = Path(self.root)
        Path(self.results_dir).mkdir(parents=True, exist_ok=True)
        Path(self.failures_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PipelineError(
                f"another run is using {self.output_dir} (lock {root / 'lock'} is held)"
            ) from None
        self._lock_fd = fd
        for d in (self.results_dir, self.failures_dir, self.root):
            for tmp in Path(d).rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- results -----------------------------------------------------------------------------------
    def result_path(self, key: str) -> str:
        return storage.join(self.results_dir, key[:2], f"{key}.json")

    def has(self, key: str) -> bool:
        return storage.exists(self.result_path(key))

    def write_result(self, result: ImageResult) -> str:
        """Write the result whole (rename on disk, one PUT in object storage); returns where."""
        path = self.result_path(result.key)
        text = json.dumps(result.to_dict(), separators=(",", ":"), sort_keys=True)
        storage.write_bytes(path, text.encode("utf-8"))
        return path

    def read_result(self, key: str) -> ImageResult:
        path = self.result_path(key)
        try:
            return ImageResult.from_dict(json.loads(storage.read_bytes(path)))
        except (OSError, ValueError, KeyError) as exc:
            raise PipelineError(
                f"cannot read the stored result {storage.display(path)}: {exc} (delete it and re-run)"
            ) from None

    def result_keys(self) -> list[str]:
        """Keys of every stored result (unordered)."""
        return [
            posixpath.basename(f)[: -len(".json")]
            for f in storage.find(self.results_dir)
            if f.endswith(".json") and not posixpath.basename(f).startswith(".")
        ]

    def count_results(self) -> int:
        return len(self.result_keys())

    # --- failures ----------------------------------------------------------------------------------
    @staticmethod
    def _item_name(item: ImageItem) -> str:
        return sha256_text(item.file_name)[:24]

    def failure_path(self, item: ImageItem) -> str:
        return storage.join(self.failures_dir, f"{self._item_name(item)}.json")

    def record_failure(self, item: ImageItem, error: str, stage: str) -> None:
        rec = {
            "file_name": item.file_name,
            "path": storage.display(item.path),
            "id": item.id,
            "stage": stage,
            "error": error,
        }
        storage.write_bytes(self.failure_path(item), json.dumps(rec, sort_keys=True).encode("utf-8"))

    def clear_failure(self, item: ImageItem) -> None:
        storage.remove(self.failure_path(item))

    def failures(self) -> list[dict[str, Any]]:
        out = []
        for rel in sorted(storage.find(self.failures_dir)):
            if "/" in rel or not rel.endswith(".json"):
                continue
            try:
                out.append(json.loads(storage.read_bytes(storage.join(self.failures_dir, rel))))
            except (OSError, ValueError):
                continue
        return out

    def write_run_info(self, info: dict[str, Any]) -> None:
        text = json.dumps(info, indent=2, sort_keys=True) + "\n"
        storage.write_bytes(storage.join(self.root, "run.json"), text.encode("utf-8"))


__all__ = ["STORE_DIR", "ResultStore", "atomic_write_bytes", "atomic_write_text"]
