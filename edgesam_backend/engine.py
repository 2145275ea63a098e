"""Build a ready predictor from a model name, a checkpoint, or a directory of ONNX files.

Model files are resolved by :func:`edgesam_backend.runtime.resolve.resolve_model` (the same resolver
as ``edgesam serve`` and ``edgesam run``). Serving (``backend="onnx"``) never imports torch when the
ONNX files exist; without torch a model name uses the official ONNX files.
"""

from __future__ import annotations

import os

from . import weights
from .runtime.base import BasePredictor
from .runtime.resolve import EngineError, ResolvedModel, resolve_model, torch_missing

BACKENDS = ("onnx", "torch")


def onnx_predictor(
    model: ResolvedModel, threads: int | None = None, decoder_mem_arena: bool = True
) -> BasePredictor:
    """An onnxruntime predictor for a resolved model (its files, capabilities and providers)."""
    from .runtime.predictor import OnnxPredictor

    return OnnxPredictor(
        model.encoder,
        model.decoder,
        intra_op_num_threads=threads,
        device=model.execution,
        decoder_mem_arena=decoder_mem_arena,
        capabilities=model.capabilities,
    )


def torch_device(device: str | None) -> str:
    """The torch device of a ``device`` option: ``cpu``, ``cuda[:N]`` (must exist), ``auto`` / None
    (``cuda`` when torch sees a GPU, else ``cpu``). onnxruntime-only names (tensorrt, openvino, coreml)
    are refused with the alternative."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise EngineError(
                f"device {device!r}: this torch sees no CUDA GPU (a CPU-only build or no driver)"
            )
        return name
    raise EngineError(f"device {device!r} is an onnxruntime provider; torch takes cpu, cuda[:N] or auto")


def load_predictor(
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    backend: str = "onnx",
    onnx_dir: str | os.PathLike[str] | None = None,
    threads: int | None = None,
    int8: bool = False,
    device: str = "cpu",
    precision: str = "auto",
) -> BasePredictor:
    """A predictor for ``checkpoint`` (model name or path) and/or ``onnx_dir``.

    ``backend="onnx"``: onnxruntime; with only ``onnx_dir`` no checkpoint is needed (official ONNX
    files work too). ``backend="torch"``: PyTorch eager from the checkpoint.

    ``int8=True`` (onnx only; off by default) uses the static-int8 encoder ``encoder.int8.onnx`` from
    the same directory (written by ``edgesam export --int8``); it is never created implicitly.
    ``precision`` (onnx only): ``auto`` (default: ``encoder.fp16.onnx`` + ``decoder.fp16.onnx`` on
    CUDA/TensorRT when they exist, else fp32), ``fp32``, ``fp16`` (``edgesam export --fp16``) or ``int8``.
    ``device``: onnx: ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``openvino``, ``coreml``, ``auto``;
    torch: ``cpu``, ``cuda[:N]``, ``auto`` (:func:`torch_device`).
    """
    if backend not in BACKENDS:
        raise EngineError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if int8 and backend != "onnx":
        raise EngineError("the int8 encoder is an ONNX model: use backend='onnx'")
    if precision not in ("auto", "fp32") and backend != "onnx":
        raise EngineError(f"precision {precision!r} selects ONNX files: use backend='onnx'")
    if backend == "torch":
        if checkpoint is None:
            raise EngineError("the torch backend needs --checkpoint")
        try:
            import torch

            from .model.predictor import TorchPredictor
        except ImportError as exc:
            raise torch_missing("the torch backend") from exc
        if threads:
            torch.set_num_threads(int(threads))
        return TorchPredictor(weights.checkpoint_path(checkpoint), device=torch_device(device))
    model = resolve_model(checkpoint, onnx_dir=onnx_dir, int8=int8, device=device, precision=precision)
    return onnx_predictor(model, threads)
