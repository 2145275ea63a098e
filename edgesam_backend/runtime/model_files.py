"""EdgeSAM ONNX file names and what a pair of files can do, read from the graphs with ``onnx``.

This is the one place that knows the file names (``encoder.onnx``, ``decoder.onnx``,
``encoder.int8.onnx``, ``encoder.fp16.onnx`` + ``decoder.fp16.onnx``) and the one place that inspects an
encoder/decoder pair. Only graph
inputs/outputs, metadata and node types are read (``load_external_data=False``; no session is built).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import onnx

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
#: Static-int8 encoder written by ``edgesam export --int8`` next to :data:`ENCODER_FILE`.
INT8_ENCODER_FILE = "encoder.int8.onnx"
#: float16 pair (float32 IO) written by ``edgesam export --fp16`` next to the fp32 files.
FP16_ENCODER_FILE = "encoder.fp16.onnx"
FP16_DECODER_FILE = "decoder.fp16.onnx"

#: The precision option of the resolver: ``auto`` (fp16 on CUDA/TensorRT when its files exist, else fp32),
#: or one of the file sets. ``int8`` swaps the encoder only (the decoder stays fp32).
Precision = Literal["auto", "fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def requested_precision(precision: str, int8: bool) -> str:
    """The precision option with the ``int8`` flag folded in (``int8=True`` is ``precision="int8"``):
    one of :data:`PRECISIONS`, lower-cased. ValueError for an unknown name or a conflicting pair."""
    name = str(precision).strip().lower()
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if int8 and name not in ("auto", "int8"):
        raise ValueError(f"int8 and precision {name!r} conflict: give one of them")
    return "int8" if int8 else name


OURS_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
OFFICIAL_DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")
PROPOSAL_OUTPUTS = ("proposal_logits", "proposal_ltrb")

FLAVOUR_OURS = "edgesam-backend"
FLAVOUR_OFFICIAL = "official"


class OnnxModelError(ValueError):
    """An ONNX file is missing or is not an EdgeSAM encoder/decoder this runtime understands."""


@dataclass(frozen=True)
class Capabilities:
    """What an encoder/decoder pair offers.

    Attributes:
        flavour: ``"edgesam-backend"`` (our export: batched decoder, mask input, 4 tokens with IoU and
            stability) or ``"official"`` (the authors' files: batch 1, no mask input, one ``scores``).
        supports_mask_input: the decoder takes ``mask_input (B, 1, 256, 256)`` low-res logits.
        has_proposals: the encoder also emits ``proposal_logits`` / ``proposal_ltrb`` (RPN head).
        official_scores_are_stability: official decoder whose ``scores`` are stability scores (a
            ``Div`` produces them; exported with ``--use-stability-score``), else raw IoU.
        encoder_input: name of the encoder's image input ``(1, 3, S, S)``.
        encoder_output: name of the ``(1, 256, S/16, S/16)`` embedding output.
        precision: the encoder's number format: ``"int8"`` (QDQ), ``"fp16"`` (``edgesam.precision``
            metadata, or float16 initializers) or ``"fp32"``.
        upsample_mode: ``edgesam.upsample_mode`` metadata of the encoder (``"bicubic"`` for our export;
            ``None`` for files without it, e.g. the official bilinear encoder).
        image_size: the model's square input side ``S`` (the encoder input's static side; our export
            also writes it as ``edgesam.image_size``); 1024 for the official files.
    """

    flavour: str
    supports_mask_input: bool
    has_proposals: bool
    official_scores_are_stability: bool
    encoder_input: str
    encoder_output: str
    upsample_mode: str | None
    image_size: int = 1024
    precision: str = "fp32"

    @property
    def int8(self) -> bool:
        """The encoder holds QuantizeLinear/DequantizeLinear nodes (``precision == "int8"``)."""
        return self.precision == "int8"


def _load_graph(path: str | os.PathLike[str]) -> onnx.ModelProto:
    p = Path(path)
    if not p.is_file():
        raise OnnxModelError(f"ONNX file not found: {p}")
    try:
        return onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxModelError(f"cannot load {p}: {exc}") from exc


def _inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    init = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def decoder_flavour(names: tuple[str, ...] | list[str]) -> str:
    """``"edgesam-backend"`` or ``"official"`` from the decoder's input names; raises otherwise."""
    if set(names) == set(OURS_DECODER_INPUTS):
        return FLAVOUR_OURS
    if set(names) == set(OFFICIAL_DECODER_INPUTS):
        return FLAVOUR_OFFICIAL
    hint = " (this looks like SAM's ONNX decoder, not EdgeSAM's)" if "orig_im_size" in names else ""
    raise OnnxModelError(f"unrecognised EdgeSAM decoder inputs {tuple(names)}{hint}")


def check_encoder(model: onnx.ModelProto, path: str | os.PathLike[str]) -> tuple[str, str, int]:
    """``(input name, embedding output name, image_size S)`` of an encoder graph (input
    ``(1, 3, S, S)``, ``S`` a multiple of 64); raises if it is not one."""
    ins = _inputs(model)
    dims = _dims(ins[0])[1:] if len(ins) == 1 else []
    ok = len(dims) == 3 and dims[0] == 3 and isinstance(dims[1], int) and dims[1] == dims[2]
    if not ok or int(dims[1]) < 64 or int(dims[1]) % 64:
        raise OnnxModelError(
            f"{path}: expected one encoder input of shape (1, 3, S, S) with S a multiple of 64 "
            f"(1024 official), got {[(i.name, _dims(i)) for i in ins]}"
        )
    outs = [o.name for o in model.graph.output]
    if not outs:
        raise OnnxModelError(f"{path}: the encoder has no outputs")
    return ins[0].name, ("image_embeddings" if "image_embeddings" in outs else outs[0]), int(dims[1])


def check_decoder(model: onnx.ModelProto) -> str:
    """The decoder's flavour (see :func:`decoder_flavour`); raises if it is not an EdgeSAM decoder."""
    return decoder_flavour([i.name for i in _inputs(model)])


def is_quantized(model: onnx.ModelProto) -> bool:
    """Whether the graph holds QuantizeLinear/DequantizeLinear nodes (a static-int8 QDQ model)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def graph_precision(model: onnx.ModelProto) -> str:
    """``"int8"``, ``"fp16"`` or ``"fp32"``: what the graph computes in (see :class:`Capabilities`)."""
    if is_quantized(model):
        return "int8"
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("edgesam.precision") == "fp16":
        return "fp16"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def read_capabilities(encoder: str | os.PathLike[str], decoder: str | os.PathLike[str]) -> Capabilities:
    """Inspect an encoder/decoder pair (graphs only). Raises :class:`OnnxModelError`."""
    enc, dec = _load_graph(encoder), _load_graph(decoder)
    enc_in, enc_out, image_size = check_encoder(enc, encoder)
    flavour = check_decoder(dec)
    producers = {o: n.op_type for n in dec.graph.node for o in n.output}
    scores = next((o.name for o in dec.graph.output if o.name == "scores"), None)
    meta = {p.key: p.value for p in enc.metadata_props}
    return Capabilities(
        flavour=flavour,
        supports_mask_input=flavour == FLAVOUR_OURS,
        has_proposals=set(PROPOSAL_OUTPUTS) <= {o.name for o in enc.graph.output},
        official_scores_are_stability=flavour == FLAVOUR_OFFICIAL
        and scores is not None
        and producers.get(scores) == "Div",
        encoder_input=enc_in,
        encoder_output=enc_out,
        upsample_mode=meta.get("edgesam.upsample_mode"),
        image_size=image_size,
        precision=graph_precision(enc),
    )


def onnx_files(onnx_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(encoder.onnx, decoder.onnx)`` inside ``onnx_dir`` (not checked for existence)."""
    d = Path(onnx_dir)
    return d / ENCODER_FILE, d / DECODER_FILE


def fp16_files(onnx_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(encoder.fp16.onnx, decoder.fp16.onnx)`` inside ``onnx_dir`` (not checked for existence)."""
    d = Path(onnx_dir)
    return d / FP16_ENCODER_FILE, d / FP16_DECODER_FILE
