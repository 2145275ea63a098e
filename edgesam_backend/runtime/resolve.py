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

Precision (``precision=``, files from the same directory, never created implicitly):

* ``fp32``: ``encoder.onnx`` + ``decoder.onnx``;
* ``fp16``: ``encoder.fp16.onnx`` + ``decoder.fp16.onnx`` (``edgesam export --fp16``; float32 IO);
* ``int8``: ``encoder.int8.onnx`` + ``decoder.onnx`` (``edgesam export --int8``; also ``int8=True``);
* ``auto`` (default): fp16 when the chosen device is CUDA/TensorRT and the fp16 pair exists, else fp32
  (onnxruntime's CPU float16 kernels up-cast, so fp16 is slower than fp32 on the CPU).
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
    PRECISIONS,
    Capabilities,
    OnnxModelError,
    fp16_files,
    onnx_files,
    read_capabilities,
    requested_precision,
)
from .providers import DeviceError, ExecutionPlan, parse_device, resolve_providers

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
        encoder: encoder ONNX path (the int8 / fp16 one for those precisions).
        decoder: decoder ONNX path (the fp16 one for fp16).
        encoder_sha256 / decoder_sha256: hex sha256 of each file's bytes (the pipeline's cache key).
        digest: hex sha256 of the encoder's bytes followed by the decoder's (``model_version``).
        capabilities: see :class:`.model_files.Capabilities`.
        execution: the onnxruntime providers for the requested device.
        source: ``"onnx_dir"``, ``"export"`` (ours, from the checkpoint) or ``"official"``.
        precision: the file set in use: ``"fp32"``, ``"fp16"`` or ``"int8"`` (``auto`` resolved).
    """

    encoder: Path
    decoder: Path
    encoder_sha256: str
    decoder_sha256: str
    digest: str
    capabilities: Capabilities
    execution: ExecutionPlan
    source: str
    precision: str = "fp32"

    @property
    def int8(self) -> bool:
        """The int8 encoder is in use."""
        return self.precision == "int8"

    @property
    def model_version(self) -> str:
        """``edgesam-<digest[:12]>``: changes exactly when the model files' bytes change."""
        return f"edgesam-{self.digest[:12]}"

    def describe(self) -> str:
        """The one-line account the serve and run logs print: version, files, device, providers, precision."""
        return (
            f"model {self.model_version}: {self.encoder} + {self.decoder}, device {self.execution.chosen}, "
            f"providers {self.execution.names}, precision {self.precision}"
        )

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


def _on_gpu(execution: ExecutionPlan) -> bool:
    return parse_device(execution.chosen)[0] in ("cuda", "tensorrt")


def choose_precision(precision: str, int8: bool, execution: ExecutionPlan, fp16_present: bool) -> str:
    """``"fp32"``, ``"fp16"`` or ``"int8"`` for the ``precision`` option (see the module docstring);
    ``int8=True`` is ``precision="int8"``. Raises :class:`EngineError` for an unknown or conflicting one."""
    try:
        name = requested_precision(precision, int8)
    except ValueError as exc:
        raise EngineError(str(exc)) from None
    if name == "auto":
        return "fp16" if _on_gpu(execution) and fp16_present else "fp32"
    return name


def _precision_files(
    enc: Path, dec: Path, source: str, precision: str, checkpoint: object
) -> tuple[Path, Path]:
    """The encoder/decoder of ``precision`` next to the fp32 pair ``enc``/``dec``; raises if missing."""
    if precision == "fp32":
        return enc, dec
    if source == SOURCE_OFFICIAL:
        flag = "--int8" if precision == "int8" else "--fp16"
        raise EngineError(
            f"{precision} needs our export's {precision} files (`edgesam export {flag}`); "
            f"{checkpoint} resolved to {OFFICIAL_NOTE}"
        )
    if precision == "int8":
        int8_enc = enc.with_name(INT8_ENCODER_FILE)
        if not int8_enc.is_file():
            raise EngineError(
                f"int8 encoder requested but {int8_enc} does not exist "
                "(write it with `edgesam export --int8 --calibration-images DIR`)"
            )
        return int8_enc, dec
    pair = fp16_files(enc.parent)
    missing = [str(p) for p in pair if not p.is_file()]
    if missing:
        raise EngineError(
            f"fp16 requested but {' and '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist "
            f"(write them with `edgesam export --checkpoint CKPT --out {enc.parent} --fp16`)"
        )
    return pair


def resolve_model(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    onnx_dir: str | os.PathLike[str] | None = None,
    int8: bool = False,
    device: str = "cpu",
    precision: str = "auto",
) -> ResolvedModel:
    """Resolve a model (see the module docstring for the order and the precisions).

    Args:
        checkpoint: model name (``edge_sam``, ``edge_sam_3x``) or ``.pth`` path, or ``None``.
        onnx_dir: directory with ``encoder.onnx`` + ``decoder.onnx`` (the export target for a checkpoint).
        int8: use ``encoder.int8.onnx`` from the same directory (same as ``precision="int8"``).
        device: ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``openvino``, ``coreml`` or ``auto``.
        precision: ``auto`` (fp16 on CUDA/TensorRT when ``encoder.fp16.onnx`` + ``decoder.fp16.onnx``
            exist, else fp32), ``fp32``, ``fp16`` or ``int8``.

    Raises:
        EngineError: missing files or extra, unknown device or missing provider, unknown precision or
            its files missing.
        weights.WeightsError: the checkpoint (or the official ONNX files) could not be fetched.
    """
    try:
        execution = resolve_providers(device)
    except DeviceError as exc:
        raise EngineError(str(exc)) from None
    choose_precision(precision, int8, execution, False)  # option errors before any download or export
    enc, dec, source = _locate(checkpoint, onnx_dir)
    fp16_present = source != SOURCE_OFFICIAL and all(p.is_file() for p in fp16_files(enc.parent))
    chosen = choose_precision(precision, int8, execution, fp16_present)
    enc, dec = _precision_files(enc, dec, source, chosen, checkpoint)
    if chosen == "fp16" and not _on_gpu(execution):
        log.warning(
            "fp16 model files on %s: onnxruntime up-casts float16 there (slower than fp32)", execution.chosen
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
        precision=chosen,
    )


__all__ = [
    "NEEDS_DOWNLOAD",
    "NEEDS_EXPORT",
    "PRECISIONS",
    "READY",
    "EngineError",
    "ResolvedModel",
    "choose_precision",
    "existing_onnx_files",
    "model_availability",
    "resolve_model",
    "torch_available",
]
