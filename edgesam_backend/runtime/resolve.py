"""The one model resolver: checkpoint name/path and/or ONNX directory + options → files, digest,
capabilities and execution providers. Torch-free.

Every entry point (``engine.load_predictor``, ``edgesam predict/serve/run``, the Label Studio backend,
the pipeline, the benchmarks) resolves its model here, so they agree on file names, int8, devices and
on the content digest that Label Studio shows as ``model_version`` and the pipeline uses in its
cache key.

Resolution order:

1. only ``onnx_dir``: ``onnx_dir/encoder.onnx`` + ``decoder.onnx`` (ours or official-format files);
2. ``checkpoint`` with ``onnx_dir`` (or the cache ``$EDGESAM_HOME/onnx/<stem>-<sha256[:16]>``) already
   holding the export: those files;
3. ``checkpoint`` and PyTorch installed: our bicubic-exact export, written once into that directory;
4. ``checkpoint`` is a model *name* and PyTorch is not installed: the official ONNX files published
   beside the checkpoint (bilinear encoder, decoder without mask input), downloaded once (resumable,
   verified) into ``$EDGESAM_HOME/onnx/<name>-official``.

``int8=True`` swaps in ``encoder.int8.onnx`` from the same directory (never created implicitly).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .. import weights
from ..fileio import file_sha256, sha256_files
from .model_files import (
    INT8_ENCODER_FILE,
    Capabilities,
    OnnxModelError,
    onnx_files,
    read_capabilities,
)
from .providers import DeviceError, ExecutionPlan, resolve_providers

log = logging.getLogger("edgesam_backend.runtime")

SOURCE_ONNX_DIR = "onnx_dir"
SOURCE_EXPORT = "export"
SOURCE_OFFICIAL = "official"

OFFICIAL_NOTE = (
    "the official EdgeSAM ONNX export: bilinear encoder (ours keeps the trained bicubic upsampling) and "
    "a decoder without mask input; install PyTorch (pip install 'edgesam-backend[torch]') for ours"
)


class EngineError(RuntimeError):
    """The requested model cannot be set up (missing files, missing extra, bad combination)."""


@dataclass(frozen=True)
class ResolvedModel:
    """A resolved model: where its files are and what they offer.

    Attributes:
        encoder: encoder ONNX path (the int8 one when ``int8``).
        decoder: decoder ONNX path.
        encoder_sha256 / decoder_sha256: hex sha256 of each file's bytes (the pipeline's cache key).
        digest: hex sha256 of the encoder's bytes followed by the decoder's (``model_version``).
        capabilities: see :class:`.model_files.Capabilities`.
        execution: the onnxruntime providers for the requested device.
        source: ``"onnx_dir"``, ``"export"`` (ours, from the checkpoint) or ``"official"``.
        int8: the int8 encoder was requested (and found).
    """

    encoder: Path
    decoder: Path
    encoder_sha256: str
    decoder_sha256: str
    digest: str
    capabilities: Capabilities
    execution: ExecutionPlan
    source: str
    int8: bool

    @property
    def model_version(self) -> str:
        """``edgesam-<digest[:12]>``: changes exactly when the model files' bytes change."""
        return f"edgesam-{self.digest[:12]}"

    @property
    def flavour(self) -> str:
        return self.capabilities.flavour


def torch_missing(what: str) -> EngineError:
    """The error for a step that needs the ``[torch]`` extra."""
    return EngineError(
        f"{what} needs PyTorch, which is not installed: pip install 'edgesam-backend[torch]' "
        "(or export elsewhere with `edgesam export` and pass the ONNX directory)"
    )


def torch_available() -> bool:
    """Whether ``import torch`` would find a module (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def existing_onnx_files(onnx_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(encoder.onnx, decoder.onnx)`` inside ``onnx_dir``; raises :class:`EngineError` if one is missing."""
    enc, dec = onnx_files(onnx_dir)
    missing = [str(p) for p in (enc, dec) if not p.is_file()]
    if missing:
        raise EngineError(
            f"ONNX directory {Path(onnx_dir)} lacks {', '.join(missing)} (write them with `edgesam export`)"
        )
    return enc, dec


def _has_onnx(d: Path) -> bool:
    return all(p.is_file() for p in onnx_files(d))


_digests: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: Path) -> str:
    """:func:`fileio.file_sha256`, memoised per path/size/mtime for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_sha256(path)
    return _digests[key]


def _pair_digest(enc: Path, dec: Path) -> str:
    key = f"{cached_sha256(enc)}+{cached_sha256(dec)}"
    if key not in _pair_digests:
        _pair_digests[key] = sha256_files([enc, dec])
    return _pair_digests[key]


_pair_digests: dict[str, str] = {}


def _looks_like_name(checkpoint: str | os.PathLike[str]) -> bool:
    return not Path(checkpoint).is_file() and os.fspath(checkpoint) in weights.MODELS


def _export(checkpoint: str | os.PathLike[str], target: Path | None) -> tuple[Path, Path]:
    """Ours: files already exported for ``checkpoint`` in ``target`` (or its cache dir), else export now."""
    ckpt = weights.checkpoint_path(checkpoint)
    out = target if target is not None else weights.onnx_cache_dir(ckpt)
    if _has_onnx(out):
        return onnx_files(out)
    try:
        from ..export.onnx import export_onnx
    except ImportError as exc:
        raise torch_missing(f"exporting ONNX for {ckpt} into {out}") from exc
    export_onnx(ckpt, out)
    return existing_onnx_files(out)


def _cached_export(name: str) -> tuple[Path, Path] | None:
    """Our export of model ``name`` when both the checkpoint and its export are already cached."""
    ckpt = weights.cached_path(name)
    if not ckpt.is_file():
        return None
    d = weights.onnx_cache_dir(ckpt)
    return onnx_files(d) if _has_onnx(d) else None


def _locate(
    checkpoint: str | os.PathLike[str] | None, onnx_dir: str | os.PathLike[str] | None
) -> tuple[Path, Path, str]:
    if checkpoint is None:
        if onnx_dir is None:
            raise EngineError("give a checkpoint (name or path) or an ONNX directory")
        return (*existing_onnx_files(onnx_dir), SOURCE_ONNX_DIR)
    target = Path(onnx_dir) if onnx_dir is not None else None
    if target is not None and _has_onnx(target):
        return (*onnx_files(target), SOURCE_ONNX_DIR)
    if target is None and _looks_like_name(checkpoint) and not torch_available():
        name = os.fspath(checkpoint)
        cached = _cached_export(name)
        if cached is not None:
            return (*cached, SOURCE_EXPORT)
        enc, dec = weights.fetch_official_onnx(name)
        log.warning("PyTorch is not installed: model %s uses %s (%s, %s)", name, OFFICIAL_NOTE, enc, dec)
        return enc, dec, SOURCE_OFFICIAL
    return (*_export(checkpoint, target), SOURCE_EXPORT)


#: :func:`model_availability` outcomes.
READY, NEEDS_EXPORT, NEEDS_DOWNLOAD = "ready", "export", "download"


def model_availability(
    checkpoint: str | os.PathLike[str] | None, onnx_dir: str | os.PathLike[str] | None = None
) -> tuple[str, str]:
    """What :func:`resolve_model` would do for these arguments, without downloading or exporting anything.

    Returns ``(READY, directory)`` when the ONNX files are on disk, ``(NEEDS_EXPORT, target directory)``
    when a local checkpoint will be exported on first use (PyTorch installed), ``(NEEDS_DOWNLOAD, URL)``
    when a named model is not cached. Raises :class:`EngineError` / ``weights.WeightsError`` for what
    cannot resolve at all (an ONNX directory without the files, a missing checkpoint file, an export
    without PyTorch).
    """
    if checkpoint is None:
        if onnx_dir is None:
            raise EngineError("give a checkpoint (name or path) or an ONNX directory")
        return READY, str(existing_onnx_files(onnx_dir)[0].parent)
    target = Path(onnx_dir) if onnx_dir is not None else None
    if target is not None and _has_onnx(target):
        return READY, str(target)
    name = os.fspath(checkpoint)
    if _looks_like_name(checkpoint):
        spec = weights.model_spec(name)
        if target is None and not torch_available():
            if _cached_export(name) is not None:
                return READY, str(weights.onnx_cache_dir(weights.cached_path(name)))
            official = weights.official_onnx_dir(name)
            if all((official / f).is_file() for f in (spec.onnx_encoder, spec.onnx_decoder)):
                return READY, str(official)
            return NEEDS_DOWNLOAD, spec.onnx_url(spec.onnx_encoder)
        ckpt = weights.cached_path(name)
        if not ckpt.is_file():
            return NEEDS_DOWNLOAD, spec.url
    else:
        ckpt = weights.checkpoint_path(checkpoint, download=False)
    out = target if target is not None else weights.onnx_cache_dir(ckpt)
    if _has_onnx(out):
        return READY, str(out)
    if not torch_available():
        raise torch_missing(f"exporting ONNX for {ckpt} into {out}")
    return NEEDS_EXPORT, str(out)


def resolve_model(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    onnx_dir: str | os.PathLike[str] | None = None,
    int8: bool = False,
    device: str = "cpu",
) -> ResolvedModel:
    """Resolve a model (see the module docstring for the order).

    Args:
        checkpoint: model name (``edge_sam``, ``edge_sam_3x``) or ``.pth`` path, or ``None``.
        onnx_dir: directory with ``encoder.onnx`` + ``decoder.onnx`` (the export target for a checkpoint).
        int8: use ``encoder.int8.onnx`` from the same directory.
        device: ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``openvino``, ``coreml`` or ``auto``.

    Raises:
        EngineError: missing files or extra, unknown device or missing provider, int8 unavailable.
        weights.WeightsError: the checkpoint (or the official ONNX files) could not be fetched.
    """
    try:
        execution = resolve_providers(device)
    except DeviceError as exc:
        raise EngineError(str(exc)) from None
    enc, dec, source = _locate(checkpoint, onnx_dir)
    if int8:
        if source == SOURCE_OFFICIAL:
            raise EngineError(
                "int8 needs our export's encoder.int8.onnx (`edgesam export --int8`); "
                f"{checkpoint} resolved to {OFFICIAL_NOTE}"
            )
        enc = enc.with_name(INT8_ENCODER_FILE)
        if not enc.is_file():
            raise EngineError(
                f"int8 encoder requested but {enc} does not exist "
                "(write it with `edgesam export --int8 --calibration-images DIR`)"
            )
    try:
        caps = read_capabilities(enc, dec)
    except OnnxModelError as exc:
        raise EngineError(str(exc)) from None
    return ResolvedModel(
        encoder=enc,
        decoder=dec,
        encoder_sha256=cached_sha256(enc),
        decoder_sha256=cached_sha256(dec),
        digest=_pair_digest(enc, dec),
        capabilities=caps,
        execution=execution,
        source=source,
        int8=int8,
    )


__all__ = [
    "NEEDS_DOWNLOAD",
    "NEEDS_EXPORT",
    "READY",
    "EngineError",
    "ResolvedModel",
    "existing_onnx_files",
    "model_availability",
    "resolve_model",
    "torch_available",
]
