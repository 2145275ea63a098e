"""Where pipeline inputs and outputs live: local paths or fsspec URLs (``s3://``, ``gs://``, ``az://``,
``memory://``, any protocol fsspec knows), behind one small set of functions.

Local paths keep using the OS directly (atomic rename, flock). URLs go through :mod:`fsspec`, which is
imported only when a URL is used; the protocol's own package must be installed (``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``, ``adlfs`` for ``az://``: ``pip install 'edgesam-backend[s3]'`` adds s3fs).

Credentials come from each protocol's standard provider chain (for S3: ``AWS_*`` environment
variables, ``~/.aws``, instance / pod roles; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an
S3-compatible server). They are never passed in the pipeline YAML, and :func:`display` strips any
``user:password@`` a URL carries before it is shown in messages, summaries or output files.

An object written by :func:`write_bytes` is one whole PUT: readers see the complete object or none,
which is what the result store needs in place of a rename.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from pathlib import Path
from typing import Any


class StorageError(RuntimeError):
    """A URL that cannot be used (its fsspec implementation is not installed, a malformed URL)."""


_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")

#: Which package provides each common protocol (named in the error when it is missing).
_PACKAGES = {"s3": "s3fs (pip install 'edgesam-backend[s3]')", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}
_PACKAGES.update({"az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"})


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for ``proto://...`` other than ``file://`` (which is treated as a local path)."""
    m = _URL.match(str(path))
    return bool(m) and m.group(1).lower() != "file"


def local_path(path: str | os.PathLike[str]) -> str:
    """``file:///x`` → ``/x``; anything else unchanged."""
    s = str(path)
    return s[len("file://") :] if s.lower().startswith("file://") else s


def display(path: str | os.PathLike[str]) -> str:
    """``path`` without credentials (``s3://KEY:SECRET@bucket/x`` → ``s3://bucket/x``)."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", str(path))


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` / ``parts`` (``/``-joined for URLs, OS paths otherwise)."""
    if is_url(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return str(Path(local_path(base), *parts))


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path inside it (without the protocol)."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError:  # pragma: no cover - fsspec ships with ray / s3fs
        raise StorageError(f"{display(url)}: URLs need fsspec (pip install 'edgesam-backend[s3]')") from None
    del fsspec
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        proto = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
        need = _PACKAGES.get(proto, f"the fsspec implementation of {proto}://")
        raise StorageError(f"{display(url)}: {proto}:// needs {need}: {exc}") from None


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole file / object."""
    if is_url(path):
        fs, p = filesystem(str(path))
        return bytes(fs.cat_file(p))
    with open(local_path(path), "rb") as f:
        return f.read()


def read_text(path: str | os.PathLike[str]) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` whole: an atomic rename on disk, one PUT for an object."""
    if is_url(path):
        fs, p = filesystem(str(path))
        fs.pipe_file(p, data)
        return
    from ..fileio import atomic_write_bytes

    atomic_write_bytes(local_path(path), data)


def exists(path: str | os.PathLike[str]) -> bool:
    """Is there a file / object at ``path``."""
    if is_url(path):
        fs, p = filesystem(str(path))
        fs.invalidate_cache(p)  # another process (a Ray worker, an earlier run) may have written it
        return bool(fs.isfile(p))
    return Path(local_path(path)).is_file()


def isdir(path: str | os.PathLike[str]) -> bool:
    if is_url(path):
        fs, p = filesystem(str(path))
        return bool(fs.isdir(p))
    return Path(local_path(path)).is_dir()


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file / object if it is there."""
    if is_url(path):
        fs, p = filesystem(str(path))
        try:
            fs.rm_file(p)
        except FileNotFoundError:
            pass
        return
    Path(local_path(path)).unlink(missing_ok=True)


def find(root: str | os.PathLike[str]) -> list[str]:
    """Every file below ``root``, as paths relative to it (``/``-separated, unsorted)."""
    if is_url(root):
        fs, p = filesystem(str(root))
        p = p.rstrip("/")
        fs.invalidate_cache(p)
        try:
            found = fs.find(p)
        except FileNotFoundError:
            return []
        return [f[len(p) + 1 :] for f in found if f.startswith(p + "/")]
    base = Path(local_path(root))
    return [f.relative_to(base).as_posix() for f in base.rglob("*") if f.is_file()]


def glob_match(rel: str, pattern: str) -> bool:
    """``Path.glob`` semantics on ``/``-separated names: ``*`` within a segment, ``**`` any segments."""
    parts, pats = rel.split("/"), pattern.strip("/").split("/")

    def match(i: int, j: int) -> bool:
        if j == len(pats):
            return i == len(parts)
        if pats[j] == "**":
            return any(match(k, j + 1) for k in range(i, len(parts) + 1))
        return i < len(parts) and fnmatch.fnmatchcase(parts[i], pats[j]) and match(i + 1, j + 1)

    return match(0, 0)


def relative_url(url: str, root: str) -> str:
    """``url`` relative to ``root`` when below it, else the URL's path part (no protocol)."""
    root = root.rstrip("/") + "/"
    if url.startswith(root):
        return url[len(root) :]
    return display(url).split("://", 1)[-1]


def upload_tree(local_dir: str | os.PathLike[str], url: str) -> None:
    """Copy every file below ``local_dir`` to the same relative place below ``url`` (each a whole PUT)."""
    base = Path(local_dir)
    for f in sorted(base.rglob("*")):
        if f.is_file():
            write_bytes(join(url, f.relative_to(base).as_posix()), f.read_bytes())


__all__ = [
    "StorageError",
    "display",
    "exists",
    "filesystem",
    "find",
    "glob_match",
    "is_url",
    "isdir",
    "join",
    "local_path",
    "read_bytes",
    "read_text",
    "relative_url",
    "remove",
    "upload_tree",
    "write_bytes",
]
