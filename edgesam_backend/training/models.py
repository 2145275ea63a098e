"""Student and teacher models at any input size, for distillation and evaluation.

The prompt encoder's frame scales with the input (``build_edge_sam(image_size=S)``: embedding S/16,
low-res masks 4x the embedding; the weights do not depend on the size), so a 128-px run keeps every
ratio of the 1024-px recipe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..model.checkpoint import CheckpointError, check_state_dict, read_checkpoint_file, unwrap_state_dict
from ..model.common import LayerNorm2d
from ..model.edge_sam import EdgeSam, build_edge_sam
from ..model.repvit import Conv2d_BN, OpSequential, RepViTBlock
from ..model.sam_vit import SamTeacher, build_sam_teacher
from ..model.upsample import UpSampleLayer


class SlimRepViT(nn.Module):
    """RepViT topology with one block per stage (widths ``w0..w3``, strides 4/8/16/32) and the same
    fuse neck: ``(B, 3, S, S)`` → ``(B, 256, S/16, S/16)``. For fast experiments only: its state_dict
    is not EdgeSAM's official layout."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 128), upsample_mode: str = "bicubic"):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = nn.Sequential(Conv2d_BN(3, w0 // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(w0 // 2, w0, 3, 2, 1))
        self.stages = nn.ModuleList(
            [
                RepViTBlock(w0, 2 * w0, w0, 3, 1, True),
                RepViTBlock(w0, 2 * w1, w1, 3, 2, False),
                RepViTBlock(w1, 2 * w2, w2, 3, 2, False),
                RepViTBlock(w2, 2 * w3, w3, 3, 2, False),
            ]
        )
        self.fuse_stage2 = nn.Conv2d(w2, 256, 1, bias=False)
        self.fuse_stage3 = OpSequential(
            [nn.Conv2d(w3, 256, 1, bias=False), UpSampleLayer(mode=upsample_mode)]
        )
        self.neck = nn.Sequential(
            nn.Conv2d(256, 256, 1, bias=False),
            LayerNorm2d(256),
            nn.Conv2d(256, 256, 3, padding=1, bias=False),
            LayerNorm2d(256),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return self.neck(self.fuse_stage2(feats[2]) + self.fuse_stage3(feats[3]))


def build_student(
    image_size: int,
    arch: str = "edge_sam",
    slim_widths: tuple[int, int, int, int] = (16, 32, 64, 128),
    upsample_mode: str = "bicubic",
) -> EdgeSam:
    """EdgeSAM (or its slim variant) with the prompt frame set for ``image_size``; train mode off."""
    model = build_edge_sam(upsample_mode=upsample_mode, image_size=image_size)
    if arch == "slim":
        model.image_encoder = SlimRepViT(tuple(slim_widths), upsample_mode)
    elif arch != "edge_sam":
        raise ValueError(f"unknown student arch {arch!r}")
    return model.eval()


def build_teacher(
    kind: str, checkpoint: str | os.PathLike[str] | None, image_size: int, seed: int = 0
) -> SamTeacher:
    """SAM teacher at ``image_size``; random weights (seeded, with non-zero position tables) when
    ``checkpoint`` is None."""
    if checkpoint is not None:
        return build_sam_teacher(kind, checkpoint, img_size=image_size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        teacher = build_sam_teacher(kind, None, img_size=image_size)
        with torch.no_grad():  # SAM initialises these to zero; random values exercise them
            teacher.image_encoder.pos_embed.normal_(0, 0.02)
            for blk in teacher.image_encoder.blocks:
                blk.attn.rel_pos_h.normal_(0, 0.02)
                blk.attn.rel_pos_w.normal_(0, 0.02)
    return teacher


def student_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The student weights inside a training checkpoint (``last.pth``: ``{"model": ...}``) or a plain
    state_dict file's content."""
    return unwrap_state_dict(obj)


def load_student_weights(
    model: EdgeSam, source: str | os.PathLike[str] | Mapping[str, Any], official: bool
) -> None:
    """Load a state_dict (path or object) into ``model`` strictly. ``official``: also check EdgeSAM's
    official key/shape layout first (the real topology)."""
    sd = student_state_dict(source if isinstance(source, Mapping) else read_checkpoint_file(source))
    if official:
        check_state_dict(sd)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint does not fit the student: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatches {wrong[:5]}"
        )
    model.load_state_dict(sd, strict=True)


def load_encoder_weights(
    student: EdgeSam, path: str | os.PathLike[str], strict: bool, log: Callable[[str], Any] = print
) -> None:
    """Student encoder weights from an EdgeSAM state_dict / training checkpoint (``image_encoder.*``)
    or a bare RepViT one (``features.*``, e.g. ImageNet weights; ``strict=False`` skips the rest)."""
    sd = read_checkpoint_file(path)
    enc = {k[len("image_encoder.") :]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    if not enc:
        enc = dict(sd)
    own = student.image_encoder.state_dict()
    fit = {k: v for k, v in enc.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in fit]
    if strict and (missing or len(fit) != len(enc)):
        raise CheckpointError(
            f"{path}: encoder weights do not fit the student ({len(missing)} missing, "
            f"{len(enc) - len(fit)} unexpected or of another shape, e.g. {(missing or list(enc))[:3]})"
        )
    student.image_encoder.load_state_dict(fit, strict=False)
    log(f"loaded {len(fit)}/{len(own)} encoder tensors from {path}")
