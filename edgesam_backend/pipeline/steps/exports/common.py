"""Helpers shared by the exports: labels → categories, output file names, atomic writes."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ...base import PipelineError


def derived_name(file_name: str, suffix: str) -> str:
    """``dir/a.jpg`` → ``dir/a<suffix>`` (posix, relative; ``..`` parts are refused)."""
    p = PurePosixPath(file_name)
    if p.is_absolute() or ".." in p.parts:
        p = PurePosixPath(*[part for part in p.parts if part not in ("/", "..")])
    return str(p.with_suffix(suffix))


class NameGuard:
    """Refuses two images mapping to the same output file (``a.jpg`` and ``a.png`` → ``a.png``)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: dict[str, str] = {}

    def check(self, out_name: str, file_name: str) -> None:
        other = self.seen.get(out_name)
        if other is not None and other != file_name:
            raise PipelineError(f"{self.what}: {file_name} and {other} would both be written to {out_name}")
        self.seen[out_name] = file_name


def ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
