"""2x upsampling for the fuse neck: the trained ``F.interpolate`` form and an export-friendly exact twin.

Both map ``(B, C, H, W)`` to ``(B, C, 2H, 2W)`` with ``align_corners=False`` semantics.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Keys' constant of PyTorch's bicubic kernel (Keys 1981, a = -0.75), as in ``upsample_bicubic2d``.
CUBIC_A = -0.75


class UpSampleLayer(nn.Module):
    """``F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)`` (no parameters)."""

    def __init__(self, mode: str = "bicubic", factor: int = 2) -> None:
        super().__init__()
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"unsupported upsample mode {mode!r}: use 'bicubic' or 'bilinear'")
        self.mode = mode
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        align = False if self.mode in ("bilinear", "bicubic") else None
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=align)


def _cubic_weights(t: float, a: float = CUBIC_A) -> list[float]:
    """Weights of the 4 taps at offsets -1, 0, +1, +2 from floor(src) for fractional position ``t``."""

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic2x_phase_kernels() -> torch.Tensor:
    """The 4 (row phase, column phase) 5x5 kernels of a 2x bicubic upsample, shape ``(4, 1, 5, 5)``.

    With ``align_corners=False`` output index ``o = 2i + p`` samples source ``i - 0.25`` (p=0) or
    ``i + 0.25`` (p=1), i.e. taps ``i-2..i+1`` with t=0.75 or ``i-1..i+2`` with t=0.25. On an input
    padded by 2 (edge replicate = PyTorch's index clamping) both fit a 5-tap window starting at ``i``.
    """
    k0 = torch.tensor([*_cubic_weights(0.75), 0.0], dtype=torch.float64)
    k1 = torch.tensor([0.0, *_cubic_weights(0.25)], dtype=torch.float64)
    phases = [torch.outer(ky, kx) for ky in (k0, k1) for kx in (k0, k1)]
    return torch.stack(phases)[:, None].float()


class Bicubic2xConvUpsample(nn.Module):
    """Exact 2x bicubic upsample written as replicate-pad + depthwise 5x5 conv + pixel shuffle.

    Numerically equal (to float rounding) to ``F.interpolate(x, scale_factor=2, mode="bicubic",
    align_corners=False)`` but exports to cheap ONNX ``Conv`` + ``DepthToSpace`` instead of a cubic
    ``Resize``, which onnxruntime runs slowly on CPU.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        weight = bicubic2x_phase_kernels().repeat(channels, 1, 1, 1)  # (4C, 1, 5, 5), channel-major
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="replicate")
        x = F.conv2d(x, self.weight, stride=1, groups=self.channels)  # (B, 4C, H, W), c*4 + 2*py + px
        return F.pixel_shuffle(x, 2)
