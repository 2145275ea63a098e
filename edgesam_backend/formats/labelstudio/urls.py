"""Label Studio task image URLs ↔ file paths relative to a media root.

One rule for every caller (the ML backend's image fetcher, the pipeline's ``source.labelstudio``):

* ``/data/local-files/?d=REL`` (the URL path exactly ``/data/local-files`` or ``/data/local-files/``,
  on any host) → ``REL``, the ``d`` query value, percent-decoded — a path relative to Label Studio's
  ``LOCAL_FILES_DOCUMENT_ROOT``;
* ``/data/upload/REL`` → ``REL`` (percent-decoded), relative to Label Studio's media ``upload/`` dir.

Either ``REL`` must be a relative path without ``..`` parts, NUL bytes or a drive letter; anything
else raises :class:`UnsafePathError` (a ``ValueError``), as does a local-files URL without ``d``.
:data:`LOCAL_FILES_URL` is the reverse direction (a template for ``str.format(file_name=REL)``).
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from urllib.parse import parse_qs, unquote, urlsplit

LOCAL_FILES_PATH = "/data/local-files"
UPLOAD_PREFIX = "/data/upload/"
#: Task data URL of a file below ``LOCAL_FILES_DOCUMENT_ROOT`` (``.format(file_name=rel)``).
LOCAL_FILES_URL = LOCAL_FILES_PATH + "/?d={file_name}"
#: Schemes whose URLs are mapped to their file name by :func:`url_to_relpath`.
REMOTE_SCHEMES = ("http", "https", "s3", "gs", "gcs", "azure-blob", "azure-spi")


class UnsafePathError(ValueError):
    """A Label Studio URL names a path that is absolute, climbs out with ``..``, or is missing."""


def check_relpath(path: str, what: str = "path") -> str:
    """``path`` (``\\`` read as ``/``) when it is a safe relative path, else :class:`UnsafePathError`."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or "\x00" in path or (len(path) > 1 and path[1] == ":"):
        raise UnsafePathError(f"path traversal is not allowed in {what} {path!r}")
    return path


def local_files_path(url: str) -> str | None:
    """``REL`` of a ``/data/local-files/?d=REL`` URL; ``None`` when ``url`` is not one."""
    u = urlsplit(url)
    if u.path.rstrip("/") != LOCAL_FILES_PATH:
        return None
    params = parse_qs(u.query, keep_blank_values=True)
    ds = params.get("d")
    if not ds or not ds[0]:
        raise UnsafePathError(f"local-files URL {url!r} has no ?d=<path>")
    if len(ds) > 1 or len(params) > 1:
        # the URL is forwarded to Label Studio as is: one checked ?d= must be the only one it reads
        raise UnsafePathError(f"local-files URL {url!r} must have exactly one query parameter, ?d=<path>")
    return check_relpath(ds[0], "local-files path")


def upload_path(url: str) -> str | None:
    """``REL`` of a ``/data/upload/REL`` URL; ``None`` when ``url`` is not one."""
    u = urlsplit(url)
    if not u.path.startswith(UPLOAD_PREFIX) or len(u.path) == len(UPLOAD_PREFIX):
        return None
    return check_relpath(unquote(u.path[len(UPLOAD_PREFIX) :]), "upload path")


def url_to_relpath(url: str) -> str:
    """The relative file a task's image reference stands for: local-files and upload URLs by the rule
    above; other ``http(s)``/cloud URLs → their file name; anything else → itself, percent-decoded."""
    for mapped in (local_files_path(url), upload_path(url)):
        if mapped is not None:
            return mapped
    u = urlsplit(url)
    if u.scheme in REMOTE_SCHEMES:
        return unquote(posixpath.basename(u.path))
    return unquote(url)


__all__ = [
    "LOCAL_FILES_PATH",
    "LOCAL_FILES_URL",
    "UPLOAD_PREFIX",
    "UnsafePathError",
    "check_relpath",
    "local_files_path",
    "upload_path",
    "url_to_relpath",
]
