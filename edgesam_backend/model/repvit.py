"""RepViT-M1 image encoder with EdgeSAM's fuse neck.

Input ``(B, 3, 1024, 1024)`` normalised, zero-padded image; output ``(B, 256, 64, 64)`` image
embeddings. Stage features (stride 4/8/16/32 with 48/96/192/384 channels) are available through
:meth:`RepViT.forward_with_stages` for the region proposal head. The module and parameter names
reproduce the official checkpoints' ``image_encoder.*`` keys exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import LayerNorm2d
from .upsample import UpSampleLayer

# (kernel, expansion, out_channels, use_se, use_gelu_flag, stride) per block, as in RepViT-M1.
_STAGE2_SE = [j % 2 == 1 and j <= 13 for j in range(16)]
M1_CFGS: list[tuple[int, int, int, bool, bool, int]] = (
    [(3, 2, 48, True, False, 1), (3, 2, 48, False, False, 1), (3, 2, 48, False, False, 1)]
    + [
        (3, 2, 96, False, False, 2),
        (3, 2, 96, True, False, 1),
        (3, 2, 96, False, False, 1),
        (3, 2, 96, False, False, 1),
    ]
    + [(3, 2, 192, se, True, 2 if j == 0 else 1) for j, se in enumerate(_STAGE2_SE)]
    + [(3, 2, 384, False, True, 2), (3, 2, 384, True, True, 1), (3, 2, 384, False, True, 1)]
)
#: Indices into :data:`M1_CFGS` whose outputs are the four stage features.
M1_STAGE_IDX = (2, 6, 22, 25)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """timm's ``make_divisible``: round ``v`` to a multiple of ``divisor``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class Conv2d_BN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d (keys ``c.weight``, ``bn.*``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        ks: int = 1,
        stride: int = 1,
        pad: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_ch, out_ch, ks, stride, pad, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_ch))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """Fold the (eval-mode) BatchNorm into the convolution; returns an equivalent biased Conv2d."""
        c, bn = self.c, self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        conv = nn.Conv2d(
            c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups, bias=True
        )
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv


class Residual(nn.Module):
    """``x + m(x)`` (key ``m``)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class SqueezeExcite(nn.Module):
    """timm 0.4.12 ``SEModule``: global pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid gate."""

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        rd = make_divisible(channels * rd_ratio, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.fc2(self.act(self.fc1(s)))
        return x * s.sigmoid()


class RepVGGDW(nn.Module):
    """Depthwise 3x3 Conv-BN + depthwise 1x1 Conv-BN + identity (keys ``conv``/``conv1``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = Conv2d_BN(channels, channels, 3, 1, 1, groups=channels)
        self.conv1 = Conv2d_BN(channels, channels, 1, 1, 0, groups=channels)
        self.dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """Re-parameterise the three branches into one biased depthwise 3x3 conv."""
        conv = self.conv.fuse()
        conv1 = self.conv1.fuse()
        w = conv.weight.clone()
        w[:, :, 1:2, 1:2] += conv1.weight
        w[:, :, 1, 1] += 1.0
        conv.weight.copy_(w)
        conv.bias.add_(conv1.bias)
        return conv


class RepViTBlock(nn.Module):
    """Token mixer (RepVGGDW or strided depthwise + pointwise) then a residual GELU channel mixer."""

    def __init__(self, inp: int, hidden: int, oup: int, ks: int, stride: int, use_se: bool) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(inp, 0.25) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2d_BN(inp, inp, ks, stride, (ks - 1) // 2, groups=inp),
                se,
                Conv2d_BN(inp, oup, 1, 1, 0),
            )
            self.channel_mixer = Residual(
                nn.Sequential(Conv2d_BN(oup, 2 * oup), nn.GELU(), Conv2d_BN(2 * oup, oup, bn_weight_init=0.0))
            )
        else:
            if inp != oup:
                raise ValueError("stride-1 RepViT blocks need inp == oup")
            self.token_mixer = nn.Sequential(RepVGGDW(inp), se)
            self.channel_mixer = Residual(
                nn.Sequential(Conv2d_BN(inp, hidden), nn.GELU(), Conv2d_BN(hidden, oup, bn_weight_init=0.0))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class OpSequential(nn.Module):
    """A list of ops applied in order (key ``op_list``), as the official fuse neck stores it."""

    def __init__(self, ops: list[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class RepViT(nn.Module):
    """RepViT-M1 with the fuse neck: ``(B, 3, 1024, 1024)`` → ``(B, 256, 64, 64)``.

    Args:
        upsample_mode: ``"bicubic"`` (as trained, the default) or ``"bilinear"`` (the official ONNX
            export's choice). Has no parameters, so any checkpoint loads under either mode.
        out_chans: embedding channels (256).
    """

    stage_channels = (48, 96, 192, 384)

    def __init__(self, upsample_mode: str = "bicubic", out_chans: int = 256) -> None:
        super().__init__()
        inp = M1_CFGS[0][2]
        stem = nn.Sequential(Conv2d_BN(3, inp // 2, 3, 2, 1), nn.GELU(), Conv2d_BN(inp // 2, inp, 3, 2, 1))
        layers: list[nn.Module] = [stem]
        for k, t, c, use_se, _use_hs, s in M1_CFGS:
            oup = make_divisible(c, 8)
            hidden = make_divisible(inp * t, 8)
            layers.append(RepViTBlock(inp, hidden, oup, k, s, use_se))
            inp = oup
        self.features = nn.ModuleList(layers)
        self.stage_idx = M1_STAGE_IDX
        self.fuse_stage2 = nn.Conv2d(self.stage_channels[2], out_chans, 1, bias=False)
        self.fuse_stage3 = OpSequential(
            [nn.Conv2d(self.stage_channels[3], out_chans, 1, bias=False), UpSampleLayer(mode=upsample_mode)]
        )
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    @property
    def upsample_mode(self) -> str:
        up = self.fuse_stage3.op_list[1]
        return up.mode if isinstance(up, UpSampleLayer) else "bicubic"

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns ``(embeddings (B,256,64,64), [s4 (B,48,256,256), s8 (B,96,128,128),
        s16 (B,192,64,64), s32 (B,384,32,32)])`` for a 1024x1024 input."""
        x = self.features[0](x)
        stages: list[torch.Tensor] = []
        for i, block in enumerate(self.features[1:]):
            x = block(x)
            if i in self.stage_idx:
                stages.append(x)
        x = self.fuse_stage2(stages[2]) + self.fuse_stage3(stages[3])
        return self.neck(x), stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_stages(x)[0]
