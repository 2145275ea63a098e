"""Build a ready predictor from a model name, a checkpoint, or a directory of ONNX files.

Serving (``backend="onnx"``) never imports torch when the ONNX files exist; they are produced from
the checkpoint on first use (needs the ``[torch]`` extra) and cached under
``$EDGESAM_HOME/onnx/<checkpoint>-<sha256>/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import weights
from .runtime.base import BasePredictor

BACKENDS = ("onnx", "torch")
ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
INT8_ENCODER_FILE = "encoder.int8.onnx"  # written by `edgesam export --int8` (runtime/quantize.py)


class EngineError(RuntimeError):
    """The requested model cannot be set up (missing files, missing extra, bad combination)."""


def _torch_missing(what: str) -> EngineError:
    return EngineError(
        f"{what} needs PyTorch, which is not installed: pip install 'edgesam-backend[torch]' "
        "(or export elsewhere with `edgesam export` and pass the ONNX directory)"
    )


def onnx_files(onnx_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(encoder.onnx, decoder.onnx)`` inside ``onnx_dir``; raises if either is missing."""
    d = Path(onnx_dir)
    enc, dec = d / ENCODER_FILE, d / DECODER_FILE
    missing = [str(p) for p in (enc, dec) if not p.is_file()]
    if missing:
        raise EngineError(f"ONNX directory {d} lacks {', '.join(missing)} (write them with `edgesam export`)")
    return enc, dec


def ensure_onnx(
    checkpoint: str | os.PathLike[str], onnx_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """ONNX files for ``checkpoint`` (name or path): ``onnx_dir`` or the cache; exported once if needed."""
    ckpt = weights.checkpoint_path(checkpoint)
    target = Path(onnx_dir) if onnx_dir is not None else weights.onnx_cache_dir(ckpt)
    try:
        return onnx_files(target)
    except EngineError:
        pass
    try:
        from .model.export import export_onnx
    except ImportError as exc:
        raise _torch_missing(f"exporting ONNX for {ckpt} into {target}") from exc
    export_onnx(ckpt, target)
    return onnx_files(target)


def load_predictor(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    backend: str = "onnx",
    onnx_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    int8: bool = False,
) -> BasePredictor:
    """A predictor for ``checkpoint`` (model name or path) and/or ``onnx_dir``.

    ``backend="onnx"``: onnxruntime; with only ``onnx_dir`` no checkpoint is needed (official ONNX
    files work too). ``backend="torch"``: PyTorch eager from the checkpoint.

    ``int8=True`` (onnx only; off by default) uses the static-int8 encoder ``encoder.int8.onnx`` from
    the same directory (written by ``edgesam export --int8``); it is never created implicitly.
    """
    if backend not in BACKENDS:
        raise EngineError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if int8 and backend != "onnx":
        raise EngineError("the int8 encoder is an ONNX model: use backend='onnx'")
    if backend == "torch":
        if checkpoint is None:
            raise EngineError("the torch backend needs --checkpoint")
        try:
            import torch

            from .model.predictor import TorchPredictor
        except ImportError as exc:
            raise _torch_missing("the torch backend") from exc
        if threads:
            torch.set_num_threads(int(threads))
        return TorchPredictor(weights.checkpoint_path(checkpoint))
    from .runtime.predictor import OnnxPredictor

    if checkpoint is None:
        if onnx_dir is None:
            raise EngineError("give a checkpoint (name or path) or an ONNX directory")
        enc, dec = onnx_files(onnx_dir)
    else:
        enc, dec = ensure_onnx(checkpoint, onnx_dir)
    if int8:
        enc = enc.with_name(INT8_ENCODER_FILE)
        if not enc.is_file():
            raise EngineError(
                f"int8 encoder requested but {enc} does not exist "
                "(write it with `edgesam export --int8 --calibration-images DIR`)"
            )
    return OnnxPredictor(enc, dec, intra_op_num_threads=threads)
