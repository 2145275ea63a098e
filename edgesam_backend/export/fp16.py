"""float16 copies of the exported encoder and decoder (``edgesam export --fp16``), for GPUs.

Weights and activations become float16 (onnxruntime's own converter,
``onnxruntime.transformers.float16``); graph inputs and outputs stay float32 (``keep_io_types``), so
the predictor, the prompt packing and every caller are unchanged, and the casts sit at the graph's
edges. Numerically sensitive ops whose float16 kernels lose range (``Resize`` with cubic/linear
weights, reductions feeding LayerNorm-style statistics, ``Range``/``Shape`` arithmetic) are kept in
float32 via ``op_block_list``. The agreement with fp32 (best-mask IoU on the fixed prompt set, as for
int8: :mod:`.agreement`) is recorded in the files' metadata under ``edgesam.fp16.*``.

On CPU onnxruntime runs most float16 kernels by up-casting, so fp16 is a GPU format: on CUDA it halves
memory traffic and uses tensor cores; on CPU it is slower than fp32 (measured in benchmarks/gpu.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ..fileio import atomic_open
from ..runtime.model_files import FP16_DECODER_FILE, FP16_ENCODER_FILE
from .metadata import read_metadata

#: Ops left in float32: range-sensitive statistics and shape arithmetic.
KEEP_FP32_OPS = ["ReduceMean", "Pow", "Sqrt", "Range", "Shape", "Resize", "TopK", "NonZero", "CumSum"]


class Fp16Error(RuntimeError):
    """The float16 conversion failed or produced an unusable model."""


def convert_fp16(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write a float16 copy of the ONNX model ``src`` to ``dst`` (float32 inputs/outputs kept), atomically.

    The ``edgesam.*`` metadata of ``src`` is carried over, plus ``edgesam.precision = fp16``.
    """
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover - ships with onnxruntime
        raise Fp16Error(f"this onnxruntime has no float16 converter: {exc}") from None
    model = onnx.load(str(src))
    try:
        half = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=KEEP_FP32_OPS, disable_shape_infer=False
        )
    except Exception as exc:
        raise Fp16Error(f"float16 conversion of {src} failed: {type(exc).__name__}: {exc}") from None
    _toposort(half.graph)  # the converter appends its input casts after their consumers
    meta = read_metadata(src) | {"edgesam.precision": "fp16"}
    del half.metadata_props[:]
    for k, v in meta.items():
        entry = half.metadata_props.add()
        entry.key, entry.value = k, v
    try:
        onnx.checker.check_model(half)
    except onnx.checker.ValidationError as exc:
        raise Fp16Error(f"the float16 model of {src} does not validate: {exc}") from None
    out = Path(dst)
    with atomic_open(out) as f:
        onnx.save(half, f)
    return out


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (stable)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise Fp16Error(f"the float16 graph has a cycle or a missing input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def export_fp16(encoder: str | os.PathLike[str], decoder: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``encoder.fp16.onnx`` and ``decoder.fp16.onnx`` next to the fp32 files."""
    enc, dec = Path(encoder), Path(decoder)
    return (
        convert_fp16(enc, enc.with_name(FP16_ENCODER_FILE)),
        convert_fp16(dec, dec.with_name(FP16_DECODER_FILE)),
    )


__all__ = [
    "FP16_DECODER_FILE",
    "FP16_ENCODER_FILE",
    "KEEP_FP32_OPS",
    "Fp16Error",
    "convert_fp16",
    "export_fp16",
]
