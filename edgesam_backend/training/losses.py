"""Distillation losses, with padding excluded.

* :func:`valid_mask`: 1 inside the un-padded ``h x w`` region of the ``S x S`` input, resized
  bilinearly (``align_corners=False``) to a grid; thresholded ``> 0.5`` for the embedding loss, kept
  fractional for the mask losses.
* :func:`masked_mse`: phase 1, ``mean_b [ Σ_{x∈valid_b} mean_c (S − T)² / |valid_b| ]``.
* :func:`weighted_bce`: per prompt ``Σ_{c,x} v·BCE(p, y) / Σ_{c,x} v``, then the mean over prompts.
* :func:`weighted_dice`: per (prompt, channel) ``1 − (2 Σ vp·vy + 1) / (Σ vp + Σ vy + 1)``, then the
  mean over all of them.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def valid_mask(
    input_hw: list[tuple[int, int]],
    image_size: int,
    grid: int,
    *,
    threshold: bool,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``(B, 1, grid, grid)`` padding weights for images of un-padded sizes ``input_hw``."""
    full = torch.zeros((len(input_hw), 1, image_size, image_size), device=device)
    for b, (h, w) in enumerate(input_hw):
        full[b, :, :h, :w] = 1.0
    v = F.interpolate(full, size=(grid, grid), mode="bilinear", align_corners=False)
    return (v > 0.5).float() if threshold else v


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``student``/``teacher`` ``(B, C, H, W)``, ``valid (B, 1, H, W)`` {0, 1} → scalar."""
    per_pixel = (student.float() - teacher.float()).pow(2).mean(dim=1, keepdim=True)
    num = (per_pixel * valid).flatten(1).sum(dim=1)
    den = valid.flatten(1).sum(dim=1).clamp(min=1.0)
    return (num / den).mean()


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``logits``/``target`` ``(N, C, H, W)``, ``weight (N, 1, H, W)`` → scalar (mean over prompts)."""
    w = weight.expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return ((bce * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp(min=1e-6)).mean()


def weighted_dice(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``prob``/``target`` ``(N, C, H, W)``, ``weight (N, 1, H, W)`` → scalar (mean over N·C);
    +1 smoothing in numerator and denominator."""
    p = (prob.float() * weight).flatten(2)
    y = (target.float() * weight).flatten(2)
    dice = 1.0 - (2.0 * (p * y).sum(-1) + 1.0) / (p.sum(-1) + y.sum(-1) + 1.0)
    return dice.mean()


def mask_distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    weight: torch.Tensor,
    *,
    bce_weight: float = 5.0,
    dice_weight: float = 5.0,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BCE + Dice of student logits against the teacher's binarised masks (hard labels ``m_t > 0``),
    token to token. Returns ``(total, bce, dice)``."""
    target = (teacher_logits > 0).float()
    logits = student_logits.float() / temperature
    bce = weighted_bce(logits, target, weight)
    dice = weighted_dice(torch.sigmoid(logits), target, weight)
    return bce_weight * bce + dice_weight * dice, bce, dice
