"""Resumable, atomic HTTP download with the standard library only.

Data streams into ``<file>.part`` and resumes with an HTTP ``Range`` request after an interruption;
the final file appears through an atomic ``os.replace`` only once it is complete and verified.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import file_sha256
from .registry import WeightsError, WeightsUnavailableError

_USER_AGENT = "edgesam-backend (python urllib)"

ProgressCallback = Callable[[int, int | None], None]


def part_path(dest: Path) -> Path:
    """The partial-download file of ``dest``."""
    return dest.with_suffix(dest.suffix + ".part")


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into ``(start, total)``."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _content_length(headers: Any) -> int | None:
    value = headers.get("Content-Length") if headers is not None else None
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return describe(reason)
        return str(reason) if reason else "URLError"
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) else "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fsync_path(path: Path) -> None:
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Best-effort fsync of a directory so a rename is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _stream(
    resp: http.client.HTTPResponse,
    part: Path,
    mode: str,
    done: int,
    total: int | None,
    chunk_size: int,
    progress: ProgressCallback | None,
) -> int:
    """Copy the response body into ``part`` (``mode`` "ab" or "wb"); return the bytes now in it."""
    with open(part, mode) as f:
        if progress is not None:
            progress(done, total)
        while True:
            chunk = resp.read(chunk_size)
            if not chunk:
                break
            f.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        f.flush()
        os.fsync(f.fileno())
    return done


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str | None = None,
    timeout: float = 30.0,
    chunk_size: int = 1 << 20,
    progress: ProgressCallback | None = None,
    verify: Callable[[Path], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, resuming a previous partial download.

    Data streams into ``dest + ".part"``. If that file already exists the download resumes with
    ``Range: bytes=N-``: a 206 reply is appended, a 200 reply (server ignored the range) restarts
    from zero, and a 416 reply means the part file is already complete. Once complete, the file is
    checked against ``sha256`` (if given) and by ``verify`` (if given, called with the part file's
    path; it should raise :class:`WeightsError`), fsynced and moved onto ``dest`` with
    ``os.replace``. ``dest`` therefore never exists half-written.

    Args:
        url: Source URL (http, https or file).
        dest: Final path; its parent directories are created.
        sha256: Expected hex digest; on mismatch the part file is deleted and WeightsError raised.
        timeout: Socket timeout in seconds for connecting and for each read.
        chunk_size: Read size in bytes.
        progress: Called as ``progress(bytes_done, total_or_None)`` as data arrives.
        verify: Extra check of the completed part file before it is moved into place; if it
            raises, the part file is deleted and the exception propagates.

    Returns:
        ``dest`` as a Path.

    Raises:
        WeightsUnavailableError: network/HTTP failure or truncated transfer; the part file is kept
            so a later call resumes.
        WeightsError: sha256 mismatch or failed ``verify`` (the part file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    expected = sha256.strip().lower() if sha256 else None
    use_range = True

    for _attempt in range(3):
        offset = part.stat().st_size if (use_range and part.exists()) else 0
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        if offset > 0:
            request.add_header("Range", f"bytes={offset}-")
        try:
            resp = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            headers = exc.headers
            exc.close()
            if exc.code == 416 and offset > 0:
                _, total = _parse_content_range(headers.get("Content-Range") if headers else None)
                if total is None or total == offset:
                    break  # the part file already holds the whole file
                use_range = False  # our part file does not match the remote file: start over
                continue
            raise WeightsUnavailableError(f"could not download {url}: {describe(exc)}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise WeightsUnavailableError(f"could not download {url}: {describe(exc)}") from exc

        with resp:
            status = getattr(resp, "status", None) or 200
            length = _content_length(resp.headers)
            if status == 206 and offset > 0:
                start, total = _parse_content_range(resp.headers.get("Content-Range"))
                if start is None:
                    start = offset
                if start != offset:
                    use_range = False  # unexpected range; fetch the whole file instead
                    continue
                if total is None and length is not None:
                    total = offset + length
                mode, done = "ab", offset
            elif status in (200, 206):
                # 200: fresh download, or the server ignored our Range header -> restart at zero.
                total = length
                if status == 206:
                    _, total = _parse_content_range(resp.headers.get("Content-Range"))
                mode, done = "wb", 0
            else:
                raise WeightsUnavailableError(f"could not download {url}: unexpected HTTP status {status}")
            try:
                done = _stream(resp, part, mode, done, total, chunk_size, progress)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise WeightsUnavailableError(
                    f"download of {url} was interrupted ({describe(exc)}); "
                    f"{part} was kept and the next attempt resumes from it"
                ) from exc
        if total is not None and done != total:
            if done > total:
                part.unlink(missing_ok=True)
                raise WeightsUnavailableError(
                    f"download of {url} produced {done} bytes but the server announced {total}"
                )
            raise WeightsUnavailableError(
                f"download of {url} was interrupted after {done} of {total} bytes; "
                f"{part} was kept and the next attempt resumes from it"
            )
        break
    else:
        raise WeightsUnavailableError(f"could not download {url}: server kept sending inconsistent ranges")

    if expected is not None:
        actual = file_sha256(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise WeightsError(
                f"sha256 mismatch for {url}: expected {expected}, got {actual}; the download was deleted"
            )
    if verify is not None:
        try:
            verify(part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    _fsync_path(part)
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    return dest
