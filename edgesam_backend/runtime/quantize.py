"""Static int8 (QDQ) quantization of the EdgeSAM encoder, and its agreement with fp32.

onnxruntime and numpy only (no torch). :func:`quantize_encoder` writes a per-channel QDQ encoder
calibrated on real images (dynamic quantization turns the convolutions into ``ConvInteger`` plus
runtime quantization and is ~3.7x *slower* than fp32 on CPU; static QDQ is the fast path).
:func:`agreement` measures what the speed costs: the IoU between the best masks of an fp32 and an
int8 predictor for a fixed, deterministic set of prompts on each image.

Defaults (chosen by measurement on a 2-core AVX-512 VNNI CPU with the random reference weights;
``benchmarks/int8.py --variants`` re-runs the comparison):

* QDQ format, per-channel symmetric int8 weights, uint8 activations: onnxruntime's ``U8S8``
  ``QLinearConv`` kernels. int8 activations (``S8S8``) ran ~2x slower than uint8; ``reduce_range``
  (7-bit weights, for CPUs without VNNI) lost agreement and is off;
* only ``Conv`` is quantized; residual adds between two quantized convs become ``QLinearAdd`` by
  onnxruntime's own QDQ fusion. Quantizing every op type (SE Mul/Sigmoid/pooling, LayerNorm) was
  no faster and agreed less;
* two exact graph rewrites before quantization (:func:`fuse_gelu`, :func:`spatial_means_to_pooling`):
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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from . import transforms
from .base import BasePredictor
from .image import ImageError, load_image
from .onnx_metadata import read_metadata, update_metadata

#: File name of the int8 encoder next to ``encoder.onnx``.
INT8_ENCODER_FILE = "encoder.int8.onnx"
#: Mean best-mask IoU against fp32 at which int8 may be used by default.
AGREEMENT_THRESHOLD = 0.95
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

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


def list_images(directory: str | os.PathLike[str]) -> list[Path]:
    """Image files (by suffix) directly inside ``directory``, sorted by name; raises if none."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"calibration image directory not found: {d}")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {d}")
    return files


def _input_name(model: str | os.PathLike[str] | onnx.ModelProto) -> str:
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in init]
    if len(names) != 1:
        raise ValueError(f"expected an encoder with one input, got {names}")
    return names[0]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``transforms.preprocess(load_image(p))[0]`` for each path, one image per batch.

    Images are decoded lazily (one 12 MiB tensor alive at a time). ``input_name`` is read from
    ``model`` (a path or ModelProto) unless given.
    """

    def __init__(
        self,
        image_paths: Iterable[str | os.PathLike[str]],
        model: str | os.PathLike[str] | onnx.ModelProto | None = None,
        input_name: str | None = None,
    ) -> None:
        self.paths = [Path(p) for p in image_paths]
        if input_name is None:
            if model is None:
                raise ValueError("give the model or the input name")
            input_name = _input_name(model)
        self.input_name = input_name
        self._pos = 0

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        if self._pos >= len(self.paths):
            return None
        path = self.paths[self._pos]
        self._pos += 1
        x, _ = transforms.preprocess(load_image(path))
        return {self.input_name: x}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.paths = self.paths[start_index:end_index]
        self._pos = 0


def _check_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        raise ValueError("calibration_images must be a list of image paths (see list_images)")
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("calibration_images is empty: int8 calibration needs at least one image")
    for p in out:
        try:
            load_image(p)
        except ImageError as exc:
            raise ValueError(f"unreadable calibration image: {exc}") from None
    return out


def _constant_values(model: onnx.ModelProto) -> dict[str, NDArray[Any]]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def fuse_gelu(model: onnx.ModelProto) -> int:
    """Replace exact (erf) GELU subgraphs ``Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)`` by
    onnxruntime's ``com.microsoft.Gelu`` in place; returns how many were fused.

    onnxruntime fuses these itself at its extended optimisation level, but not once the graph is
    wrapped in QDQ nodes: the int8 encoder then runs five unfused elementwise ops per GELU (~30 % of
    its time on a 2-core CPU). Fusing before quantization keeps one ``Gelu`` kernel between the
    ``DequantizeLinear`` and ``QuantizeLinear`` around it. The function is the same (erf GELU).
    """
    consts = _constant_values(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}

    def const(name: str, value: float) -> bool:
        v = consts.get(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - value) < 1e-4

    def only_consumer(tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if tensor in graph_outputs or len(users) != 1 or users[0].op_type != op_type:
            return None
        return users[0]

    def other(node: onnx.NodeProto, tensor: str) -> str | None:
        if len(node.input) != 2 or tensor not in node.input:
            return None
        return node.input[1] if node.input[0] == tensor else node.input[0]

    replace: dict[int, onnx.NodeProto] = {}  # id(first node) → Gelu
    drop: set[int] = set()
    for erf in model.graph.node:
        if erf.op_type != "Erf":
            continue
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not const(div.input[1], float(np.sqrt(2.0))):
            continue
        x = div.input[0]
        if only_consumer(div.output[0], "Erf") is None:
            continue
        add = only_consumer(erf.output[0], "Add")
        one = other(add, erf.output[0]) if add is not None else None
        if add is None or one is None or not const(one, 1.0):
            continue
        mul = only_consumer(add.output[0], "Mul")
        if mul is None or other(mul, add.output[0]) != x:
            continue
        half_mul = only_consumer(mul.output[0], "Mul")
        half = other(half_mul, mul.output[0]) if half_mul is not None else None
        if half_mul is None or half is None or not const(half, 0.5):
            continue
        name = div.name.rsplit("/", 1)[0] + "/Gelu" if "/" in div.name else f"{div.name}_Gelu"
        gelu = onnx.helper.make_node("Gelu", [x], [half_mul.output[0]], name=name, domain="com.microsoft")
        replace[id(div)] = gelu
        drop.update(id(n) for n in (erf, add, mul, half_mul))
    if not replace:
        return 0
    nodes = []
    for n in model.graph.node:
        if id(n) in replace:
            nodes.append(replace[id(n)])
        elif id(n) not in drop:
            nodes.append(n)
    used = {i for n in nodes for i in n.input} | graph_outputs
    nodes = [n for n in nodes if n.op_type != "Constant" or any(o in used for o in n.output)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    inits = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replace)


def spatial_means_to_pooling(model: onnx.ModelProto) -> int:
    """Rewrite ``ReduceMean(x, axes=[2, 3], keepdims=1)`` on 4-D tensors (the squeeze-excite means) as
    the equivalent ``GlobalAveragePool`` in place; returns how many. onnxruntime runs the pooling
    in its blocked (NCHWc) layout, the reduction not, which matters once the surrounding convs are
    int8 and no longer in that layout."""
    count = 0
    for i, n in enumerate(model.graph.node):
        if n.op_type != "ReduceMean" or len(n.input) != 1:  # opset >= 18 passes axes as an input
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if sorted(attrs.get("axes", [])) not in ([2, 3], [-2, -1]) or attrs.get("keepdims", 1) != 1:
            continue
        pool = onnx.helper.make_node("GlobalAveragePool", list(n.input), list(n.output), name=n.name)
        model.graph.node[i].CopyFrom(pool)
        count += 1
    return count


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
    images = _check_images(calibration_images)
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


# --- agreement -------------------------------------------------------------------------------------
def default_prompts(h: int, w: int) -> list[dict[str, Any]]:
    """The fixed prompt set for an ``h x w`` image: a 3x3 grid of single positive points at 25/50/75 %
    of the width and height (3 multimask outputs), and two boxes (1 output)."""
    prompts: list[dict[str, Any]] = []
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            prompts.append(
                {"point_coords": [[w * fx, h * fy]], "point_labels": [1], "box": None, "num_masks": 3}
            )
    for box in ((0.25, 0.25, 0.75, 0.75), (0.1, 0.2, 0.6, 0.9)):
        prompts.append(
            {
                "point_coords": None,
                "point_labels": None,
                "box": [w * box[0], h * box[1], w * box[2], h * box[3]],
                "num_masks": 1,
            }
        )
    return prompts


def mask_iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    """IoU of two boolean masks; two empty masks agree perfectly (1.0)."""
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def _best_mask(predictor: BasePredictor, emb: Any, prompt: dict[str, Any]) -> NDArray[np.bool_]:
    pred = predictor.predict(
        prompt["point_coords"],
        prompt["point_labels"],
        prompt["box"],
        num_multimask_outputs=prompt["num_masks"],
        embedding=emb,
    )
    return pred.masks[pred.best("stability")]


def agreement(
    fp32_predictor: BasePredictor,
    int8_predictor: BasePredictor,
    images: Sequence[str | os.PathLike[str] | NDArray[np.uint8]],
    prompts_per_image: int | None = None,
) -> dict[str, Any]:
    """How closely ``int8_predictor`` follows ``fp32_predictor``.

    Each image is encoded by both; for every prompt of :func:`default_prompts` (the first
    ``prompts_per_image`` of them if given) the best mask by stability score is taken from each and
    their IoU computed (in the original image frame).

    Returns a JSON-ready dict: ``mean_iou``, ``min_iou`` (over all prompts), ``per_image`` (image →
    mean IoU), ``embedding_rel_error`` (``||e8 - e32|| / ||e32||``: ``mean`` and ``max`` over images),
    ``num_images``, ``num_prompts``, ``threshold`` and ``passes`` (``mean_iou >= threshold``).
    """
    if not images:
        raise ValueError("agreement needs at least one image")
    if prompts_per_image is not None and prompts_per_image < 1:
        raise ValueError(f"prompts_per_image must be >= 1, got {prompts_per_image}")
    ious: list[float] = []
    per_image: dict[str, float] = {}
    rel_errors: list[float] = []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            image, name = item, f"image{i}"
        else:
            image, name = load_image(item), Path(item).name
        if name in per_image:
            name = f"{name}#{i}"
        e32 = fp32_predictor.encode(image)
        e8 = e32 if int8_predictor is fp32_predictor else int8_predictor.encode(image)
        ref = float(np.linalg.norm(e32.embeddings))
        diff = float(np.linalg.norm(e8.embeddings.astype(np.float64) - e32.embeddings))
        rel_errors.append(diff / ref if ref > 0 else (0.0 if diff == 0 else float("inf")))
        prompts = default_prompts(*image.shape[:2])[:prompts_per_image]
        img_ious = [
            mask_iou(_best_mask(fp32_predictor, e32, p), _best_mask(int8_predictor, e8, p)) for p in prompts
        ]
        per_image[name] = float(np.mean(img_ious))
        ious.extend(img_ious)
    mean_iou = float(np.mean(ious))
    return {
        "mean_iou": mean_iou,
        "min_iou": float(np.min(ious)),
        "per_image": per_image,
        "embedding_rel_error": {"mean": float(np.mean(rel_errors)), "max": float(np.max(rel_errors))},
        "num_images": len(per_image),
        "num_prompts": len(ious),
        "threshold": AGREEMENT_THRESHOLD,
        "passes": mean_iou >= AGREEMENT_THRESHOLD,
    }


def record_agreement(path: str | os.PathLike[str], result: dict[str, Any]) -> None:
    """Store an :func:`agreement` summary in the int8 model's metadata (``edgesam.int8.*``), atomically."""
    p = Path(path)
    values = {
        "edgesam.int8.mean_iou": f"{result['mean_iou']:.6f}",
        "edgesam.int8.min_iou": f"{result['min_iou']:.6f}",
        "edgesam.int8.embedding_rel_error": f"{result['embedding_rel_error']['mean']:.6f}",
        "edgesam.int8.agreement_images": str(result["num_images"]),
        "edgesam.int8.passes": str(bool(result["passes"])).lower(),
    }
    update_metadata(p, values)


def is_int8_model(path: str | os.PathLike[str]) -> bool:
    """Whether an ONNX file contains QuantizeLinear/DequantizeLinear nodes."""
    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)


__all__ = [
    "AGREEMENT_THRESHOLD",
    "DEFAULT_EXCLUDE",
    "DEFAULT_OP_TYPES",
    "INT8_ENCODER_FILE",
    "ImageCalibrationReader",
    "QuantizationError",
    "agreement",
    "default_prompts",
    "fuse_gelu",
    "is_int8_model",
    "list_images",
    "mask_iou",
    "quantize_encoder",
    "record_agreement",
    "spatial_means_to_pooling",
]
