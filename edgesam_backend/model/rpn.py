"""Region proposal module: a light FPN + anchor-free detection head on the RepViT stage features.

Class-agnostic boxes with an objectness score, in the spirit of EdgeSAM's granularity-prior RPN
(EfficientDet-style in the paper) but our own, smaller design:

* **Neck**: lateral 1x1 convs (96/192/384 → C) on stages 1-3 (strides 8/16/32), top-down nearest
  upsampling + add, a depthwise-separable 3x3 smoothing per level, and one extra stride-64 level
  from a stride-2 depthwise-separable conv on P5. Levels P3..P6, strides 8/16/32/64.
* **Head** (shared across levels): 2 depthwise-separable 3x3 conv blocks (BN + GELU), then a 3x3
  objectness conv (1 logit) and a 3x3 box conv (4 distances left/top/right/bottom, FCOS style,
  ``exp`` with a learnable per-level scale, in units of the level's stride).

Output: for each level, ``logits (B, 1, H_l, W_l)`` and ``ltrb (B, 4, H_l, W_l)`` in model-frame
pixels; :meth:`RegionProposalHead.flatten` concatenates all levels to ``(B, L)`` / ``(B, L, 4)``.
At 1024² the head costs ~0.5 GMACs (~2.5% of the encoder). Weights live under ``rpn_head.``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..runtime.proposals import STRIDES


def _sep_conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class RegionProposalHead(nn.Module):
    """FPN + shared anchor-free head. ``forward(stages)`` takes the RepViT stage list
    ``[s4, s8, s16, s32]`` and returns ``(logits, ltrb)`` lists over levels P3..P6."""

    strides = STRIDES

    def __init__(self, in_channels: tuple[int, int, int] = (96, 192, 384), channels: int = 64) -> None:
        super().__init__()
        self.channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.smooth = nn.ModuleList(_sep_conv(channels, channels) for _ in in_channels)
        self.extra = _sep_conv(channels, channels, stride=2)
        self.tower = nn.Sequential(_sep_conv(channels, channels), _sep_conv(channels, channels))
        self.cls = nn.Conv2d(channels, 1, 3, padding=1)
        self.box = nn.Conv2d(channels, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(STRIDES)))
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.constant_(self.cls.bias, -math.log((1 - 0.01) / 0.01))  # prior objectness 0.01
        nn.init.normal_(self.box.weight, std=0.01)
        nn.init.constant_(self.box.bias, 0.0)

    def forward(self, stages: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        c3, c4, c5 = stages[1], stages[2], stages[3]
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        feats = [self.smooth[0](p3), self.smooth[1](p4), self.smooth[2](p5)]
        feats.append(self.extra(feats[-1]))
        logits, ltrb = [], []
        for i, f in enumerate(feats):
            t = self.tower(f)
            logits.append(self.cls(t))
            ltrb.append(torch.exp((self.scales[i] * self.box(t)).clamp(max=10.0)) * self.strides[i])
        return logits, ltrb

    @staticmethod
    def flatten(logits: list[torch.Tensor], ltrb: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Levels → ``(B, L)`` logits and ``(B, L, 4)`` distances, row-major per level, P3 first."""
        lo = torch.cat([x.flatten(1) for x in logits], dim=1)
        bx = torch.cat([x.flatten(2).transpose(1, 2) for x in ltrb], dim=1)
        return lo, bx
