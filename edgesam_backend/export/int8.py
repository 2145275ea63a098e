"""Static int8 (QDQ) quantization of the EdgeSAM encoder, and its agreement with fp32.

onnxruntime and numpy only (no torch). :func:`quantize_encoder` writes a per-channel QDQ encoder
calibrated on real images (dynamic quantization turns the convolutions into ``ConvInteger`` plus
runtime quantization and is ~3.7x *slower* than fp32 on CPU; static QDQ is the fast path).
:func:`.agreement.agreement` measures what the speed costs: the IoU between the best masks of an fp32 and an
int8 predictor for a fixed, deterministic set of prompts on each image.

Defaults (chosen by measurement on a 2-core AVX-512 VNNI CPU with the random reference weights;
``benchmarks/int8.py --variants`` re-runs the comparison):

* QDQ format, per-channel symmetric int8 weights, uint8 activations: onnxruntime's ``U8S8``
  ``QLinearConv`` kernels. int8 activations (``S8S8``) ran ~2x slower than uint8; ``reduce_range``
  (7-bit weights, for CPUs without VNNI) lost agreement and is off;
* only ``Conv`` is quantized; residual adds between two quantized convs become ``QLinearAdd`` by
  onnxruntime's own QDQ fusion. Quantizing every op type (SE Mul/Sigmoid/pooling, LayerNorm) was
  no faster and agreed less;
* two exact graph rewrites before quantization (:mod:`.rewrites`):
  without them onnxruntime leaves the erf GELUs unfused in the QDQ graph and int8 gains only ~1.3x;
* MinMax calibration. Percentile calibration agreed marginally better at ~4x the calibration time;
  ``entropy`` through ``quantize_static`` uses 128 histogram bins and reproduced MinMax's ranges;
* kept in fp32 (:data:`DEFAULT_EXCLUDE`): the fuse neck (two 1x1 convs and the fixed-tap bicubic
  depthwise conv + DepthToSpace upsample; int8 depthwise convs are slow here) and the first
  output-neck conv ``neck.0``, whose input is the wide-range sum of the two fused pyramid levels:
  about 3 % of the encoder's 17.3 GMACs. The 3x3 ``neck.2`` (14 % of the MACs) is int8: keeping it
  fp32 cost ~20 ms for no measurable agreement. LayerNorms are never quantized.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from ..runtime.image import ImageError
from ..runtime.model_files import is_quantized
from .calibration import ImageCalibrationReader, check_images
from .metadata import read_metadata, update_metadata
from .rewrites import fuse_gelu, spatial_means_to_pooling

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
QUANT_TYPES = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv",)
#: Node-name prefixes (of our export's encoder) kept in fp32: the fuse neck and the first output-neck
#: conv (see the module docstring).
DEFAULT_EXCLUDE: tuple[str, ...] = ("/encoder/fuse_stage", "/encoder/neck/neck.0")


class QuantizationError(RuntimeError):
    """onnxruntime could not quantize the model (the inputs were fine)."""


def _excluded_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> list[str]:
    """Names of nodes whose name starts with one of ``patterns`` (or equals it)."""
    if not patterns:
        return []
    return [n.name for n in model.graph.node if n.name and any(n.name.startswith(p) for p in patterns)]


def quantize_encoder(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_images: Sequence[str | os.PathLike[str]],
    *,
    per_channel: bool = True,
    method: str = "minmax",
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    activation_type: str = "quint8",
    weight_type: str = "qint8",
    reduce_range: bool = False,
    preprocess: bool = True,
    rewrite: bool = True,
    extra_options: dict[str, Any] | None = None,
) -> Path:
    """Write a static, QDQ int8 copy of the encoder ``fp32_path`` to ``out_path`` (atomically).

    Args:
        fp32_path: fp32 encoder ONNX (``image (1,3,1024,1024)`` → ``image_embeddings``).
        out_path: where to write the int8 model (conventionally ``encoder.int8.onnx``).
        calibration_images: image files; each is preprocessed as at inference and fed once.
        per_channel: per-output-channel weight scales (per-tensor loses far more accuracy here).
        method: activation range calibration, ``"minmax"``, ``"percentile"`` or ``"entropy"``.
        op_types: op types to quantize (``None``: every type onnxruntime can quantize).
        exclude: node-name prefixes to keep in fp32 (default: the fuse and output necks).
        activation_type / weight_type: ``"quint8"`` or ``"qint8"``.
        reduce_range: 7-bit weights (for CPUs without VNNI, where U8S8 can saturate).
        preprocess: run onnxruntime's ``quant_pre_process`` (shape inference + graph cleanup) first.
        rewrite: exact graph rewrites that keep the int8 graph fast: :func:`fuse_gelu` and
            :func:`spatial_means_to_pooling`.
        extra_options: passed to ``quantize_static`` (overrides ours).

    Raises:
        ValueError: no calibration images, an unreadable one, or a bad option.
        FileNotFoundError: ``fp32_path`` is missing.
        QuantizationError: onnxruntime failed.
    """
    src, dst = Path(fp32_path), Path(out_path)
    if not src.is_file():
        raise FileNotFoundError(f"fp32 encoder not found: {src}")
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"method must be one of {sorted(CALIBRATION_METHODS)}, got {method!r}")
    for name, value in (("activation_type", activation_type), ("weight_type", weight_type)):
        if value not in QUANT_TYPES:
            raise ValueError(f"{name} must be one of {sorted(QUANT_TYPES)}, got {value!r}")
    images = check_images(calibration_images)
    dst.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"WeightSymmetric": True}
    if method != "minmax":
        # Histogram calibrators keep every tensor's histogram; bound the working set.
        options["CalibMaxIntermediateOutputs"] = 1
    options.update(extra_options or {})
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".quantize-") as tmp:
        model_in = src
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            model_in = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(model_in), skip_symbolic_shape=True)
            except Exception as exc:  # onnxruntime raises its own classes
                raise QuantizationError(f"quant_pre_process failed on {src}: {exc}") from exc
        model = onnx.load(str(model_in))
        if rewrite:  # after quant_pre_process: its shape inference does not know com.microsoft ops
            fuse_gelu(model)
            spatial_means_to_pooling(model)
        reader = ImageCalibrationReader(images, model)
        tmp_out = Path(tmp) / "int8.onnx"
        # onnxruntime's histogram calibrators print progress; keep stdout clean for JSON-printing callers
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(
                    model,
                    str(tmp_out),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(op_types) if op_types is not None else None,
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    activation_type=QUANT_TYPES[activation_type],
                    weight_type=QUANT_TYPES[weight_type],
                    nodes_to_exclude=_excluded_nodes(model, exclude),
                    calibrate_method=CALIBRATION_METHODS[method],
                    extra_options=options,
                )
        except ImageError:
            raise
        except Exception as exc:  # onnxruntime's own classes, and ValueErrors from inside it
            raise QuantizationError(f"quantize_static failed on {src}: {exc}") from exc
        if not is_int8_model(tmp_out):
            raise QuantizationError(f"quantize_static quantized nothing in {src} (see its warnings)")
        _write_metadata(
            src,
            tmp_out,
            {
                "edgesam.role": "encoder",
                "edgesam.quantization": "int8-static-qdq",
                "edgesam.quantization.per_channel": str(per_channel).lower(),
                "edgesam.quantization.method": method,
                "edgesam.quantization.activation_type": activation_type,
                "edgesam.quantization.weight_type": weight_type,
                "edgesam.quantization.op_types": ",".join(op_types) if op_types is not None else "all",
                "edgesam.quantization.exclude": ",".join(exclude),
                "edgesam.quantization.rewrite": str(rewrite).lower(),
                "edgesam.quantization.calibration_images": str(len(images)),
            },
        )
        os.replace(tmp_out, dst)
    return dst


def _write_metadata(src: Path, path: Path, extra: dict[str, str]) -> None:
    """Carry the fp32 model's ``edgesam.*`` metadata over to ``path`` and add ``extra``."""
    update_metadata(path, {**read_metadata(src), **extra})


def is_int8_model(path: str | os.PathLike[str]) -> bool:
    """Whether an ONNX file contains QuantizeLinear/DequantizeLinear nodes."""
    return is_quantized(onnx.load(str(path), load_external_data=False))
