"""The result store: one JSON file per image, written atomically, keyed by content + config.

Layout below ``<output_dir>/.edgesam/``::

    results/<key[:2]>/<key>.json   one ImageResult (written to a temp file, then renamed into place)
    failures/<item>.json           the last failure of an item (removed when it later succeeds)
    run.json                       what the last run was (pipeline, config hash, model files)
    lock                           held (flock) while a run is active

A key is ``sha256(format, image bytes sha256, results-affecting config hash, prompt inputs)``: a re-run
skips every image whose key has a file; a changed image, prompt or model gets a new key. A process
killed at any point leaves either a complete result file or none (plus at most a stray temp file,
removed on the next run), so nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_bytes, atomic_write_text
from .base import PipelineError
from .records import ImageItem, ImageResult, sha256_text

STORE_DIR = ".edgesam"


class ResultStore:
    """Per-image results and failures of one output directory."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = Path(output_dir)
        self.root = self.output_dir / STORE_DIR
        self.results_dir = self.root / "results"
        self.failures_dir = self.root / "failures"
        self._lock_fd: int | None = None

    # --- run lock ----------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the directory lock (one run per output directory) and remove stray temp files."""
        import fcntl

        self.results_dir.mkdir(parents=True, exist_ok=True)
        self.failures_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PipelineError(
                f"another run is using {self.output_dir} (lock {self.root / 'lock'} is held)"
            ) from None
        self._lock_fd = fd
        for d in (self.results_dir, self.failures_dir, self.root):
            for tmp in d.rglob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- results -----------------------------------------------------------------------------------
    def result_path(self, key: str) -> Path:
        return self.results_dir / key[:2] / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.result_path(key).is_file()

    def write_result(self, result: ImageResult) -> Path:
        path = self.result_path(result.key)
        text = json.dumps(result.to_dict(), separators=(",", ":"), sort_keys=True)
        atomic_write_text(path, text)
        return path

    def read_result(self, key: str) -> ImageResult:
        path = self.result_path(key)
        try:
            with open(path, encoding="utf-8") as f:
                return ImageResult.from_dict(json.load(f))
        except (OSError, ValueError, KeyError) as exc:
            raise PipelineError(
                f"cannot read the stored result {path}: {exc} (delete it and re-run)"
            ) from None

    def count_results(self) -> int:
        return sum(1 for _ in self.results_dir.rglob("*.json"))

    # --- failures ----------------------------------------------------------------------------------
    @staticmethod
    def _item_name(item: ImageItem) -> str:
        return sha256_text(item.file_name)[:24]

    def failure_path(self, item: ImageItem) -> Path:
        return self.failures_dir / f"{self._item_name(item)}.json"

    def record_failure(self, item: ImageItem, error: str, stage: str) -> None:
        rec = {"file_name": item.file_name, "path": item.path, "id": item.id, "stage": stage, "error": error}
        atomic_write_text(self.failure_path(item), json.dumps(rec, sort_keys=True))

    def clear_failure(self, item: ImageItem) -> None:
        self.failure_path(item).unlink(missing_ok=True)

    def failures(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.failures_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out

    def write_run_info(self, info: dict[str, Any]) -> None:
        atomic_write_text(self.root / "run.json", json.dumps(info, indent=2, sort_keys=True) + "\n")


__all__ = ["STORE_DIR", "ResultStore", "atomic_write_bytes", "atomic_write_text"]
