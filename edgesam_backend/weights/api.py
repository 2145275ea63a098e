"""Public API of the checkpoint cache: fetch, resolve a name or path, list models, and fetch the official
ONNX pair (torch-free first run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..fileio import file_sha256
from .download import ProgressCallback, download, part_path
from .registry import (
    ENV_HOME,
    MODELS,
    ModelSpec,
    WeightsError,
    WeightsUnavailableError,
    cached_path,
    model_spec,
    official_onnx_dir,
    pinned_sha256,
    resolve_url,
)
from .verify import verify_checkpoint, verify_onnx


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
    model = model_spec(name)
    dest = cached_path(name)
    pinned = pinned_sha256(model, sha256)
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
        part_path(dest).unlink(missing_ok=True)
    download(resolve_url(model, url), dest, sha256=pinned, progress=progress, verify=verify_checkpoint)
    return dest


def offline_message(spec: ModelSpec, dest: Path, attempted_url: str | None, reason: str) -> str:
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
        model_spec(name)  # raises with the list of known names
    model = MODELS[name]
    dest = cached_path(name)
    if dest.is_file():
        return fetch(name)
    if not download:
        raise WeightsUnavailableError(offline_message(model, dest, None, "downloading is disabled"))
    attempted = resolve_url(model)
    try:
        return fetch(name)
    except WeightsUnavailableError as exc:
        raise not_cached_error(model, dest, attempted, exc) from exc


def not_cached_error(
    spec: ModelSpec, dest: Path, attempted: str, exc: WeightsUnavailableError
) -> WeightsUnavailableError:
    """Turn a download failure of an uncached model into the user-facing offline message."""
    reason = str(exc)
    prefix = f"could not download {attempted}: "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    return WeightsUnavailableError(offline_message(spec, dest, attempted, reason))


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
                "url": resolve_url(spec),
                "official_url": spec.url,
                "description": spec.description,
                "cached": cached,
                "path": str(path),
                "size": path.stat().st_size if cached else None,
            }
        )
    return rows


def fetch_official_onnx(name: str, *, progress: ProgressCallback | None = None) -> tuple[Path, Path]:
    """``(encoder, decoder)`` of the official ONNX export of model ``name`` in the cache, downloading them
    (same resumable, atomic download; each file verified by :func:`verify_onnx` before it is cached) from
    ``$EDGESAM_WEIGHTS_BASE_URL/<file>`` or the official folder beside the checkpoint.

    These are the authors' files: a bilinear encoder (ours keeps the trained bicubic upsampling) and a
    decoder without mask input, batch 1.

    Raises:
        WeightsError: unknown name or a file that fails verification.
        WeightsUnavailableError: a download failed; the message names the URL and where to put the file.
    """
    model = model_spec(name)
    out = official_onnx_dir(name)
    paths = []
    for role, filename in (("encoder", model.onnx_encoder), ("decoder", model.onnx_decoder)):
        dest = out / filename
        if not dest.is_file():
            url = resolve_url(model, filename=filename)
            try:
                download(url, dest, progress=progress, verify=lambda p, r=role: verify_onnx(p, r))
            except WeightsUnavailableError as exc:
                raise WeightsUnavailableError(
                    f"{filename} is not in the cache and could not be downloaded ({exc}). Download it from "
                    f"{model.onnx_url(filename)} and put it at {dest} (or set {ENV_HOME})."
                ) from exc
        paths.append(dest)
    return paths[0], paths[1]
