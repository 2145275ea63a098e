"""Named EdgeSAM checkpoints: registry, local cache, resumable downloads and verification.

The official checkpoints are published by the EdgeSAM authors in their Hugging Face Space
(``chongzhou/EdgeSAM``). This module knows their names and download locations, keeps a local
cache (``$EDGESAM_HOME``, default ``~/.cache/edgesam``) and downloads with the standard library
only:

* downloads stream into ``<file>.part`` and resume with an HTTP ``Range`` request after an
  interruption; the final file appears through an atomic ``os.replace`` only once it is complete
  and verified, so a half-written checkpoint never sits at its final path;
* a sha256 can be pinned (argument or ``EDGESAM_SHA256_<NAME>``) and is checked after download;
* a downloaded checkpoint is loaded and checked against EdgeSAM's state_dict layout before it is
  accepted into the cache;
* when the machine is offline, :func:`checkpoint_path` raises :class:`WeightsUnavailableError`
  with a message that names the file, the official URL and the exact path to put it at.

``torch`` is optional: it is only imported inside :func:`verify_checkpoint`.

Environment variables:

``EDGESAM_HOME``
    Cache root (checkpoints live in ``$EDGESAM_HOME/checkpoints``).
``EDGESAM_WEIGHTS_BASE_URL``
    Mirror base URL; a checkpoint is then fetched from ``<base>/<filename>``.
``EDGESAM_SHA256_<NAME>``
    Pinned sha256 for a model, e.g. ``EDGESAM_SHA256_EDGE_SAM_3X``.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS",
    "ModelSpec",
    "WeightsError",
    "WeightsUnavailableError",
    "add_cli_arguments",
    "cache_dir",
    "cached_path",
    "checkpoint_path",
    "checkpoints_dir",
    "download",
    "fetch",
    "file_sha256",
    "list_models",
    "onnx_cache_dir",
    "run_cli",
    "verify_checkpoint",
]

ENV_HOME = "EDGESAM_HOME"
ENV_BASE_URL = "EDGESAM_WEIGHTS_BASE_URL"
ENV_SHA256_PREFIX = "EDGESAM_SHA256_"

_HASH_CHUNK = 1 << 20
_USER_AGENT = "edgesam-backend (python urllib)"

ProgressCallback = Callable[[int, int | None], None]


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified."""


class WeightsUnavailableError(WeightsError):
    """A checkpoint could not be downloaded (network error, HTTP error, offline machine)."""


@dataclass(frozen=True)
class ModelSpec:
    """One named, downloadable EdgeSAM checkpoint."""

    name: str
    filename: str
    url: str
    sha256: str | None
    description: str


_HF_SPACE = "https://huggingface.co/spaces/chongzhou/EdgeSAM/resolve/main/weights"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="edge_sam",
            filename="edge_sam.pth",
            url=f"{_HF_SPACE}/edge_sam.pth",
            sha256=None,
            description="EdgeSAM (RepViT-m1 encoder distilled from SAM ViT-H), official checkpoint",
        ),
        ModelSpec(
            name="edge_sam_3x",
            filename="edge_sam_3x.pth",
            url=f"{_HF_SPACE}/edge_sam_3x.pth",
            sha256=None,
            description="EdgeSAM-3x (same architecture, longer distillation training), official checkpoint",
        ),
    )
}


# --------------------------------------------------------------------------------------------
# Cache layout
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Return the cache root: ``$EDGESAM_HOME`` if set, else ``~/.cache/edgesam`` (not created)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/edgesam").expanduser()


def checkpoints_dir() -> Path:
    """Return the directory holding cached checkpoints (``cache_dir()/checkpoints``, not created)."""
    return cache_dir() / "checkpoints"


def _spec(name: str) -> ModelSpec:
    """Look up a model by name, raising :class:`WeightsError` listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise WeightsError(f"unknown EdgeSAM model {name!r}; known models: {known}") from None


def cached_path(name: str) -> Path:
    """Return where the checkpoint of model ``name`` lives in the cache (whether or not it exists)."""
    return checkpoints_dir() / _spec(name).filename


def _part_path(dest: Path) -> Path:
    return dest.with_suffix(dest.suffix + ".part")


def _resolve_url(spec: ModelSpec, url: str | None = None) -> str:
    """The URL to download ``spec`` from: explicit ``url``, else the mirror base URL, else official."""
    if url:
        return url
    base = os.environ.get(ENV_BASE_URL, "").strip()
    if base:
        return base.rstrip("/") + "/" + spec.filename
    return spec.url


def _sha256_env_var(name: str) -> str:
    return ENV_SHA256_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def _pinned_sha256(spec: ModelSpec, sha256: str | None = None) -> str | None:
    """The sha256 to enforce: argument, else ``EDGESAM_SHA256_<NAME>``, else the registry value."""
    value = sha256 or os.environ.get(_sha256_env_var(spec.name), "").strip() or spec.sha256
    if not value:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise WeightsError(f"invalid sha256 for {spec.name!r}: {value!r} (expected 64 hex characters)")
    return value


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_cache_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """Directory for ONNX exports of ``checkpoint``: ``cache_dir()/onnx/<stem>-<sha256[:16]>``.

    The content hash makes the directory change whenever the checkpoint's bytes change, so stale
    exports are never reused. The directory is not created.
    """
    path = Path(checkpoint)
    return cache_dir() / "onnx" / f"{path.stem}-{file_sha256(path)[:16]}"


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _describe(reason)
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
    part = _part_path(dest)
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
            raise WeightsUnavailableError(f"could not download {url}: {_describe(exc)}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            raise WeightsUnavailableError(f"could not download {url}: {_describe(exc)}") from exc

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
                    f"download of {url} was interrupted ({_describe(exc)}); "
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


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a loadable EdgeSAM checkpoint.

    With torch installed the file is loaded and checked key by key and shape by shape by
    ``edgesam_backend.model.checkpoint.load_state_dict_file`` (the engine's own loader). Without
    torch, only the container format is checked (a zip archive with a ``data.pkl`` entry, which is
    what ``torch.save`` writes).

    Raises:
        WeightsError: ``"<path> is not a valid EdgeSAM checkpoint: <reason>"``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: file not found")
    try:
        import torch  # noqa: F401 - the full check needs the [torch] extra
    except ImportError:
        _check_torch_container(path)
        return
    from .model.checkpoint import CheckpointError, load_state_dict_file

    try:
        load_state_dict_file(path)
    except CheckpointError as exc:
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: {exc}") from exc


def _check_torch_container(path: Path) -> None:
    """Without torch only the container format is checked: a zip archive with a ``data.pkl`` entry."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(
            f"{path} is not a valid EdgeSAM checkpoint: not a torch.save zip archive ({_first_line(exc)})"
        ) from exc
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: zip archive has no data.pkl entry")


# --------------------------------------------------------------------------------------------
# High-level API
# --------------------------------------------------------------------------------------------


def fetch(
    name: str,
    *,
    force: bool = False,
    sha256: str | None = None,
    url: str | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Return the cached checkpoint of model ``name``, downloading and verifying it if needed.

    A cached file is returned as is (after a sha256 check when one is pinned). Otherwise it is
    downloaded (from ``url``, ``$EDGESAM_WEIGHTS_BASE_URL/<filename>`` or the official URL),
    checked with :func:`verify_checkpoint` before it is moved into the cache, and returned; a bad
    download is deleted, never cached. ``force`` re-downloads (discarding any partial download);
    the old file stays in place until the new one has been verified.

    Raises:
        WeightsError: unknown name, sha256 mismatch, invalid checkpoint.
        WeightsUnavailableError: the download failed (network/HTTP error).
    """
    spec = _spec(name)
    dest = cached_path(name)
    pinned = _pinned_sha256(spec, sha256)
    if dest.is_file() and not force:
        if pinned is not None:
            actual = file_sha256(dest)
            if actual != pinned:
                raise WeightsError(
                    f"cached {dest} has sha256 {actual}, expected {pinned}; "
                    f"re-download it with `edgesam weights fetch {name} --force`"
                )
        return dest
    if force:
        _part_path(dest).unlink(missing_ok=True)
    download(_resolve_url(spec, url), dest, sha256=pinned, progress=progress, verify=verify_checkpoint)
    return dest


def _offline_message(spec: ModelSpec, dest: Path, attempted_url: str | None, reason: str) -> str:
    where = (
        f"Download it from {spec.url} on a machine with internet access"
        if attempted_url is None or attempted_url != spec.url
        else "Download it on a machine with internet access"
    )
    if attempted_url is None:
        head = f"{spec.filename} is not in the cache ({reason})"
    else:
        head = (
            f"{spec.filename} is not in the cache and could not be downloaded from {attempted_url} ({reason})"
        )
    return f"{head}. {where} and put it at {dest} (or set {ENV_HOME}, or pass a checkpoint path)."


def checkpoint_path(name_or_path: str | os.PathLike[str], *, download: bool = True) -> Path:
    """Resolve a model name or a checkpoint file path to a local checkpoint file.

    An existing file path is returned unchanged (no network access). A known model name returns
    its cached file, downloading it first if ``download`` is true.

    Raises:
        WeightsUnavailableError: the model is not cached and could not be downloaded (or
            ``download`` is false); the message names the file, the official URL and the cache
            path to put it at.
        WeightsError: unknown name / missing file, or a failed verification.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = os.fspath(name_or_path)
    if name not in MODELS:
        if path.exists():
            raise WeightsError(f"{path} is not a file")
        looks_like_path = os.sep in name or "/" in name or path.suffix in (".pth", ".pt", ".bin", ".ckpt")
        if looks_like_path:
            raise WeightsError(f"checkpoint file not found: {path}")
        _spec(name)  # raises with the list of known names
    spec = MODELS[name]
    dest = cached_path(name)
    if dest.is_file():
        return fetch(name)
    if not download:
        raise WeightsUnavailableError(_offline_message(spec, dest, None, "downloading is disabled"))
    attempted = _resolve_url(spec)
    try:
        return fetch(name)
    except WeightsUnavailableError as exc:
        raise _not_cached_error(spec, dest, attempted, exc) from exc


def _not_cached_error(
    spec: ModelSpec, dest: Path, attempted: str, exc: WeightsUnavailableError
) -> WeightsUnavailableError:
    """Turn a download failure of an uncached model into the user-facing offline message."""
    reason = str(exc)
    prefix = f"could not download {attempted}: "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    return WeightsUnavailableError(_offline_message(spec, dest, attempted, reason))


def list_models() -> list[dict[str, Any]]:
    """Describe every registered model: name, filename, url, cached, path, size (bytes or None)."""
    rows: list[dict[str, Any]] = []
    for spec in MODELS.values():
        path = cached_path(spec.name)
        cached = path.is_file()
        rows.append(
            {
                "name": spec.name,
                "filename": spec.filename,
                "url": _resolve_url(spec),
                "official_url": spec.url,
                "description": spec.description,
                "cached": cached,
                "path": str(path),
                "size": path.stat().st_size if cached else None,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# CLI hooks
# --------------------------------------------------------------------------------------------


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``fetch`` / ``list`` / ``path`` actions to a ``weights`` (sub)parser."""
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    names = ", ".join(MODELS)

    p_fetch = actions.add_parser("fetch", help="download a checkpoint into the cache (if needed)")
    p_fetch.add_argument("name", metavar="NAME", help=f"model name ({names})")
    p_fetch.add_argument("--force", action="store_true", help="download again even if cached")
    p_fetch.add_argument("--sha256", metavar="HEX", default=None, help="expected sha256 of the file")
    p_fetch.add_argument("--url", metavar="URL", default=None, help="download from this URL instead")

    p_list = actions.add_parser("list", help="list known checkpoints and whether they are cached")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p_path = actions.add_parser("path", help="print the cached path of a checkpoint (never downloads)")
    p_path.add_argument("name", metavar="NAME", help=f"model name ({names})")


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / (1 << 20):.1f} MiB"


def _progress_printer(filename: str) -> ProgressCallback:
    stream = sys.stderr
    tty = stream.isatty()
    interval = 0.2 if tty else 2.0
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - last[0] < interval:
            return
        last[0] = now
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        line = f"downloading {filename}: {done} / {total if total is not None else '?'} bytes"
        line += f" [{_human(done)} / {_human(total)}]{pct}"
        if tty:
            stream.write("\r" + line + ("\n" if finished else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return report


def run_cli(args: argparse.Namespace) -> int:
    """Run a ``weights`` action parsed by :func:`add_cli_arguments`; return the exit code.

    Exit codes: 0 success, 1 ``path`` of a checkpoint that is not cached, 2 any other error
    (printed to stderr as ``edgesam: error: <message>``).
    """
    action = getattr(args, "weights_action", None)
    try:
        if action == "fetch":
            spec = _spec(args.name)
            try:
                path = fetch(
                    args.name,
                    force=args.force,
                    sha256=args.sha256,
                    url=args.url,
                    progress=_progress_printer(spec.filename),
                )
            except WeightsUnavailableError as exc:
                dest = cached_path(args.name)
                if dest.is_file():
                    raise
                raise _not_cached_error(spec, dest, _resolve_url(spec, args.url), exc) from exc
            print(path)
            return 0
        if action == "list":
            rows = list_models()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                for row in rows:
                    state = f"cached ({_human(row['size'])})" if row["cached"] else "not cached"
                    print(f"{row['name']:<14} {state:<22} {row['path']}")
            return 0
        if action == "path":
            try:
                path = checkpoint_path(args.name, download=False)
            except WeightsUnavailableError as exc:
                print(f"edgesam: {exc}", file=sys.stderr)
                return 1
            print(path)
            return 0
        raise WeightsError(f"unknown weights action {action!r} (expected fetch, list or path)")
    except WeightsError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return 2
