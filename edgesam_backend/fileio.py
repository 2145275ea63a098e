"""File helpers: atomic writes (a temp file in the target's directory, renamed into place on success)
and the one sha256 of file contents.

A reader never sees a half-written file; a crash leaves at most a ``.<name>.<pid>.<thread>.tmp``
next to the target (the pipeline store sweeps those on its next run).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: Path) -> Path:
    """The per-process, per-thread temp name used for ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = False) -> Iterator[IO[Any]]:
    """Open a temp file for writing; on a clean exit ``os.replace`` it onto ``path`` (after an
    optional fsync), on an exception delete it. Parent directories are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = False) -> None:
    with atomic_open(path, "wb", fsync=fsync) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    return sha256_files([path])


def sha256_files(paths: Sequence[str | os.PathLike[str]]) -> str:
    """Hex sha256 of the concatenated bytes of ``paths`` (in order)."""
    digest = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
