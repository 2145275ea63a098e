"""The registry of named EdgeSAM checkpoints (and the official ONNX files published beside them), and
the local cache layout (``$EDGESAM_HOME``, default ``~/.cache/edgesam``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..fileio import file_sha256

ENV_HOME = "EDGESAM_HOME"
ENV_BASE_URL = "EDGESAM_WEIGHTS_BASE_URL"
ENV_SHA256_PREFIX = "EDGESAM_SHA256_"


class WeightsError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified."""


class WeightsUnavailableError(WeightsError):
    """A checkpoint could not be downloaded (network error, HTTP error, offline machine)."""


@dataclass(frozen=True)
class ModelSpec:
    """One named, downloadable EdgeSAM checkpoint, and the official ONNX pair published beside it.

    ``onnx_encoder`` / ``onnx_decoder`` are file names in the same folder as the checkpoint (the
    authors' export: bilinear encoder, decoder without mask input, batch 1).
    """

    name: str
    filename: str
    url: str
    sha256: str | None
    description: str
    onnx_encoder: str
    onnx_decoder: str

    def onnx_url(self, filename: str) -> str:
        """Official URL of one of the ONNX files (same folder as the checkpoint)."""
        return self.url.rsplit("/", 1)[0] + "/" + filename


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
            onnx_encoder="edge_sam_encoder.onnx",
            onnx_decoder="edge_sam_decoder.onnx",
        ),
        ModelSpec(
            name="edge_sam_3x",
            filename="edge_sam_3x.pth",
            url=f"{_HF_SPACE}/edge_sam_3x.pth",
            sha256=None,
            description="EdgeSAM-3x (same architecture, longer distillation training), official checkpoint",
            onnx_encoder="edge_sam_3x_encoder.onnx",
            onnx_decoder="edge_sam_3x_decoder.onnx",
        ),
    )
}


def cache_dir() -> Path:
    """Return the cache root: ``$EDGESAM_HOME`` if set, else ``~/.cache/edgesam`` (not created)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/edgesam").expanduser()


def checkpoints_dir() -> Path:
    """Return the directory holding cached checkpoints (``cache_dir()/checkpoints``, not created)."""
    return cache_dir() / "checkpoints"


def model_spec(name: str) -> ModelSpec:
    """Look up a model by name, raising :class:`WeightsError` listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(sorted(MODELS))
        raise WeightsError(f"unknown EdgeSAM model {name!r}; known models: {known}") from None


def cached_path(name: str) -> Path:
    """Return where the checkpoint of model ``name`` lives in the cache (whether or not it exists)."""
    return checkpoints_dir() / model_spec(name).filename


def official_onnx_dir(name: str) -> Path:
    """Where the official ONNX pair of model ``name`` is cached (``cache_dir()/onnx/<name>-official``)."""
    return cache_dir() / "onnx" / f"{model_spec(name).name}-official"


def resolve_url(spec: ModelSpec, url: str | None = None, filename: str | None = None) -> str:
    """The URL to download ``spec``'s checkpoint (or its file ``filename``, e.g. an official ONNX file)
    from: explicit ``url``, else the mirror base URL, else official."""
    if url:
        return url
    name = filename or spec.filename
    base = os.environ.get(ENV_BASE_URL, "").strip()
    if base:
        return base.rstrip("/") + "/" + name
    return spec.url if filename is None else spec.onnx_url(filename)


def sha256_env_var(name: str) -> str:
    return ENV_SHA256_PREFIX + re.sub(r"[^A-Z0-9]", "_", name.upper())


def pinned_sha256(spec: ModelSpec, sha256: str | None = None) -> str | None:
    """The sha256 to enforce: argument, else ``EDGESAM_SHA256_<NAME>``, else the registry value."""
    value = sha256 or os.environ.get(sha256_env_var(spec.name), "").strip() or spec.sha256
    if not value:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise WeightsError(f"invalid sha256 for {spec.name!r}: {value!r} (expected 64 hex characters)")
    return value


def onnx_cache_dir(checkpoint: str | os.PathLike[str]) -> Path:
    """Directory for ONNX exports of ``checkpoint``: ``cache_dir()/onnx/<stem>-<sha256[:16]>``.

    The content hash makes the directory change whenever the checkpoint's bytes change, so stale
    exports are never reused. The directory is not created.
    """
    path = Path(checkpoint)
    return cache_dir() / "onnx" / f"{path.stem}-{file_sha256(path)[:16]}"
