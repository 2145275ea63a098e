"""ONNX export of EdgeSAM: a re-parameterised encoder and a batched, mask-aware decoder.

Encoder ``encoder.onnx``
    input ``image`` float32 ``(1, 3, 1024, 1024)`` (normalised, zero-padded; as the official export),
    output ``image_embeddings`` float32 ``(1, 256, 64, 64)``. Conv+BN and the RepVGG branches are
    folded; the fuse neck keeps the trained **bicubic** upsampling, written as pad + depthwise conv +
    DepthToSpace (exact to float rounding, much faster on onnxruntime than a cubic ``Resize``).

Decoder ``decoder.onnx`` (B prompts and N points are dynamic)
    inputs ``image_embeddings (1, 256, 64, 64)``, ``point_coords (B, N, 2)`` (x, y) model frame,
    ``point_labels (B, N)`` (-2, -1, 0, 1, 2/3 = box corners), ``mask_input (B, 1, 256, 256)``,
    ``has_mask_input (B,)``; outputs ``low_res_logits (B, 4, 256, 256)``, ``iou_predictions (B, 4)``,
    ``stability_scores (B, 4)`` for all four mask tokens. By default the reassociated decoder of
    :mod:`.fast_decoder` (same function, about half the work per prompt); ``fast_decoder=False``
    writes the plain graph of :class:`DecoderOnnxModel`.

Every export validates itself against PyTorch with onnxruntime: encoder max abs diff ≤ ``tolerance``,
decoder max abs diff ≤ ``tolerance`` x max(1, max |PyTorch logit|) (float32 rounding scales with the logits).
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..fileio import file_sha256
from ..model.checkpoint import load_edge_sam
from ..model.decoder_graph import DecoderGraph
from ..model.edge_sam import EdgeSam
from ..model.fast_decoder import FastDecoderOnnxModel
from ..model.repvit import Conv2d_BN, RepVGGDW, RepViT
from ..model.upsample import Bicubic2xConvUpsample, UpSampleLayer
from ..runtime import transforms
from ..runtime.base import ImageEmbedding
from ..runtime.model_files import DECODER_FILE, ENCODER_FILE
from ..runtime.prompts import pack_prompt
from .metadata import update_metadata

FORMAT_VERSION = "1"
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """Export failed, or the exported model disagrees with PyTorch beyond tolerance."""


def _replace_modules(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, RepVGGDW | Conv2d_BN):
            setattr(module, name, child.fuse())
        elif isinstance(child, UpSampleLayer) and child.mode == "bicubic" and child.factor == 2:
            channels = None
            for sibling in module.children():  # the 1x1 conv feeding the upsample sets the width
                if isinstance(sibling, nn.Conv2d):
                    channels = sibling.out_channels
            if channels is None:
                raise ExportError("cannot infer the channel count of the bicubic upsample")
            setattr(module, name, Bicubic2xConvUpsample(channels))
        else:
            _replace_modules(child)


def reparameterize_encoder(encoder: RepViT) -> RepViT:
    """An inference copy of ``encoder`` with BN folded, RepVGG branches merged and the bicubic
    upsample as a depthwise conv. Same function to float rounding."""
    enc = copy.deepcopy(encoder).eval()
    with torch.no_grad():
        _replace_modules(enc)
    return enc


class EncoderOnnxModel(nn.Module):
    """``image (1, 3, 1024, 1024)`` → ``image_embeddings (1, 256, 64, 64)`` and, with a region proposal
    head, ``proposal_logits (1, L)`` and ``proposal_ltrb (1, L, 4)`` (one encoder pass)."""

    def __init__(self, encoder: RepViT, rpn_head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.rpn_head = rpn_head

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.rpn_head is None:
            return self.encoder(image)
        emb, stages = self.encoder.forward_with_stages(image)
        logits, ltrb = self.rpn_head.flatten(*self.rpn_head(stages))
        return emb, logits, ltrb


class DecoderOnnxModel(DecoderGraph):
    """Prompt encoder + mask decoder for B prompts on one image; all 4 tokens and both scores."""

    def __init__(self, model: EdgeSam) -> None:
        pe = model.prompt_encoder.get_dense_pe().detach().clone()  # (1, 256, h, w)
        super().__init__(model.prompt_encoder, model.mask_decoder, pe)

    def decode(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, mask_input: torch.Tensor, has_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pe = self.prompt_encoder
        has = has_mask.reshape(-1, 1, 1, 1)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has * pe.embed_masks(mask_input) + (1 - has) * no_mask
        return self.mask_decoder.predict_masks(embeddings, self.dense_pe, sparse, dense)


@dataclass
class ExportResult:
    """Paths written and the measured agreement with PyTorch."""

    encoder_path: Path
    decoder_path: Path
    encoder_max_abs_diff: float
    decoder_max_abs_diff: dict[str, float] = field(default_factory=dict)


def export_encoder(model: EdgeSam, path: Path, opset: int = DEFAULT_OPSET, reparam: bool = True) -> None:
    """Write the encoder ONNX (see module docstring)."""
    enc = reparameterize_encoder(model.image_encoder) if reparam else model.image_encoder
    wrapper = EncoderOnnxModel(enc, model.rpn_head).eval()
    outputs = ["image_embeddings"] + (
        ["proposal_logits", "proposal_ltrb"] if model.rpn_head is not None else []
    )
    s = model.image_size
    dummy = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/constant-folding chatter; validation checks the result
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=["image"],
            output_names=outputs,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def export_decoder(model: EdgeSam, path: Path, opset: int = DEFAULT_OPSET, fast: bool = True) -> None:
    """Write the decoder ONNX (see module docstring); ``fast``: the reassociated graph."""
    wrapper = (
        FastDecoderOnnxModel(model.prompt_encoder, model.mask_decoder) if fast else DecoderOnnxModel(model)
    ).eval()
    g = torch.Generator().manual_seed(0)
    b, n = 2, 3
    s = model.image_size
    e, low = s // transforms.EMBED_STRIDE, transforms.low_res_size(s)
    dummy = (
        torch.randn(1, 256, e, e, generator=g),
        torch.randint(0, s, (b, n, 2), generator=g).float(),
        torch.randint(-1, 4, (b, n), generator=g).float(),
        torch.randn(b, 1, low, low, generator=g),
        torch.tensor([1.0, 0.0]),
    )
    dyn = {
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "mask_input": {0: "num_prompts"},
        "has_mask_input": {0: "num_prompts"},
        "low_res_logits": {0: "num_prompts"},
        "iou_predictions": {0: "num_prompts"},
        "stability_scores": {0: "num_prompts"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/constant-folding chatter; validation checks the result
        torch.onnx.export(
            wrapper,
            dummy,
            str(path),
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"],
            output_names=["low_res_logits", "iou_predictions", "stability_scores"],
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def _validation_image() -> np.ndarray:
    """A deterministic, textured 600x900 RGB test image (smooth gradients plus noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:600, 0:900].astype(np.float32)
    base = np.stack([xx / 900 * 255, yy / 600 * 255, (xx + yy) % 256], axis=-1)
    noise = rng.normal(0, 25, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def validate_export(
    model: EdgeSam,
    encoder_path: Path,
    decoder_path: Path,
    tolerance: float = 1e-4,
    image: np.ndarray | None = None,
) -> tuple[float, dict[str, float]]:
    """Compare onnxruntime with the PyTorch model; raise :class:`ExportError` beyond ``tolerance``."""
    from ..model.predictor import TorchPredictor
    from ..runtime.predictor import OnnxPredictor

    image = _validation_image() if image is None else image
    tp = TorchPredictor(model)
    op = OnnxPredictor(encoder_path, decoder_path)
    x, input_hw = transforms.preprocess(image, model.image_size)
    t_out, o_out = tp._encode_outputs(x), op._encode_outputs(x)
    if set(t_out) != set(o_out):
        raise ExportError(f"encoder outputs differ: {sorted(t_out)} vs {sorted(o_out)}")
    # relative for the proposal distances (pixels, up to ~1e3), absolute for the rest
    enc_diff = max(
        float(
            np.abs(t_out[k] - o_out[k]).max()
            / (max(1.0, float(np.abs(t_out[k]).max())) if k == "proposal_ltrb" else 1.0)
        )
        for k in t_out
    )
    # the decoders are compared on the same (PyTorch) embeddings; no second encoder pass
    te = ImageEmbedding(t_out["image_embeddings"], (int(image.shape[0]), int(image.shape[1])), input_hw)
    h, w = image.shape[:2]
    prompts = {
        "point": ([[w * 0.4, h * 0.3]], [1], None),
        "box": (None, None, [w * 0.2, h * 0.25, w * 0.7, h * 0.8]),
        "points": ([[w * 0.4, h * 0.3], [w * 0.6, h * 0.5], [w * 0.3, h * 0.7]], [1, 1, 0], None),
        "box+point": ([[w * 0.5, h * 0.5]], [0], [w * 0.1, h * 0.1, w * 0.9, h * 0.9]),
    }
    dec: dict[str, float] = {}
    # float32 rounding grows with the logits' magnitude (a fitted model's reach 1e3, where 1e-3 is
    # rounding, not a wrong graph): each decoder diff is held to tolerance * max(1, max |PyTorch logit|)
    scale = 1.0

    def compare(t: tuple[np.ndarray, ...], o: tuple[np.ndarray, ...]) -> float:
        nonlocal scale
        scale = max(scale, float(np.abs(t[0]).max()), float(np.abs(t[1]).max()))
        return float(max(np.abs(t[0] - o[0]).max(), np.abs(t[1] - o[1]).max()))

    for name, (pc, pl, box) in prompts.items():
        coords, labels = pack_prompt(pc, pl, box, te.original_hw, te.image_size)
        t_low, t_iou, _ = tp.predict_low_res(coords, labels, embedding=te)  # same embeddings on both sides
        dec[name] = compare((t_low, t_iou), op.predict_low_res(coords, labels, embedding=te))
    # batched prompts with a mask input (refinement), B=3
    coords, labels = pack_prompt([[w * 0.5, h * 0.4]], [1], None, te.original_hw, te.image_size)
    coords, labels = np.repeat(coords, 3, 0), np.repeat(labels, 3, 0)
    mask = np.stack([t_low[0, :1], t_low[0, 1:2], t_low[0, 2:3]]).astype(np.float32)
    dec["batch+mask_input"] = compare(
        tp.predict_low_res(coords, labels, mask, embedding=te),
        op.predict_low_res(coords, labels, mask, embedding=te),
    )
    if not (enc_diff <= tolerance and max(dec.values()) <= tolerance * scale):
        raise ExportError(
            f"exported ONNX disagrees with PyTorch: encoder {enc_diff:.3g}, decoder {dec} "
            f"(tolerance {tolerance}; decoder {tolerance * scale:.3g} for logits up to {scale:.3g})"
        )
    return enc_diff, dec


def export_onnx(
    checkpoint: str | os.PathLike[str] | EdgeSam,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    upsample_mode: str = "bicubic",
    validate: bool = True,
    tolerance: float = 1e-4,
    fast_decoder: bool = True,
) -> ExportResult:
    """Export ``out_dir/encoder.onnx`` and ``out_dir/decoder.onnx`` from a checkpoint (or model).

    Files are written to a temporary directory inside ``out_dir``, validated, then moved into place,
    so a failed or interrupted export never leaves half-written models behind. ``fast_decoder=False``
    writes the plain (pre-reassociation) decoder graph; both have the same inputs and outputs.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(checkpoint, EdgeSam):
        model, ckpt_sha = checkpoint.eval(), "in-memory"
    else:
        model = load_edge_sam(checkpoint, upsample_mode=upsample_mode, image_size=None)  # the checkpoint's S
        ckpt_sha = file_sha256(checkpoint)
    meta = {
        "edgesam.format_version": FORMAT_VERSION,
        "edgesam.producer": "edgesam-backend",
        "edgesam.upsample_mode": model.image_encoder.upsample_mode,
        "edgesam.checkpoint_sha256": ckpt_sha,
        "edgesam.image_size": str(model.image_size),
    }
    dec_meta = {"edgesam.decoder_graph": "fast" if fast_decoder else "plain"}
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        enc_tmp, dec_tmp = Path(tmp) / ENCODER_FILE, Path(tmp) / DECODER_FILE
        export_encoder(model, enc_tmp, opset)
        export_decoder(model, dec_tmp, opset, fast=fast_decoder)
        update_metadata(enc_tmp, {**meta, "edgesam.role": "encoder"})
        update_metadata(dec_tmp, {**meta, **dec_meta, "edgesam.role": "decoder"})
        enc_diff, dec_diff = (
            validate_export(model, enc_tmp, dec_tmp, tolerance) if validate else (float("nan"), {})
        )
        enc_path, dec_path = out / ENCODER_FILE, out / DECODER_FILE
        os.replace(enc_tmp, enc_path)
        os.replace(dec_tmp, dec_path)
    return ExportResult(enc_path, dec_path, enc_diff, dec_diff)
