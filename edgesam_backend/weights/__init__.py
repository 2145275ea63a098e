"""Named EdgeSAM checkpoints: registry and cache layout (:mod:`.registry`), resumable HTTP download
(:mod:`.download`), verification (:mod:`.verify`) and the public API (:mod:`.api`).

The official checkpoints (and the authors' ONNX export beside them) are published in the EdgeSAM
Hugging Face Space (``chongzhou/EdgeSAM``). Downloads use the standard library only: they stream into
``<file>.part``, resume with HTTP ``Range`` after an interruption, are verified (pinned sha256,
checkpoint layout or ONNX structure) and only then moved into place atomically. Offline,
:func:`checkpoint_path` raises :class:`WeightsUnavailableError` naming the file, the official URL and
the exact path to put it at. ``torch`` is optional (only :func:`verify_checkpoint` uses it).

Environment variables: ``EDGESAM_HOME`` (cache root), ``EDGESAM_WEIGHTS_BASE_URL`` (mirror: files are
fetched from ``<base>/<filename>``), ``EDGESAM_SHA256_<NAME>`` (pinned sha256, e.g.
``EDGESAM_SHA256_EDGE_SAM_3X``).
"""

from __future__ import annotations

from ..fileio import file_sha256
from .api import checkpoint_path, fetch, fetch_official_onnx, list_models
from .download import ProgressCallback, download
from .registry import (
    ENV_BASE_URL,
    ENV_HOME,
    MODELS,
    ModelSpec,
    WeightsError,
    WeightsUnavailableError,
    cache_dir,
    cached_path,
    checkpoints_dir,
    model_spec,
    official_onnx_dir,
    onnx_cache_dir,
)
from .verify import verify_checkpoint, verify_onnx

__all__ = [
    "ENV_BASE_URL",
    "ENV_HOME",
    "MODELS",
    "ModelSpec",
    "ProgressCallback",
    "WeightsError",
    "WeightsUnavailableError",
    "cache_dir",
    "cached_path",
    "checkpoint_path",
    "checkpoints_dir",
    "download",
    "fetch",
    "fetch_official_onnx",
    "file_sha256",
    "list_models",
    "model_spec",
    "official_onnx_dir",
    "onnx_cache_dir",
    "verify_checkpoint",
    "verify_onnx",
]
