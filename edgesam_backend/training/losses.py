"""Training losses: distillation (padding excluded), supervised fine-tuning and the region proposals.

* :func:`valid_mask`: 1 inside the un-padded ``h x w`` region of the ``S x S`` input, resized
  bilinearly (``align_corners=False``) to a grid; thresholded ``> 0.5`` for the embedding loss, kept
  fractional for the mask losses.
* :func:`masked_mse`: phase 1, ``mean_b [ Σ_{x∈valid_b} mean_c (S − T)² / |valid_b| ]``.
* :func:`weighted_bce`: per prompt ``Σ_{c,x} v·BCE(p, y) / Σ_{c,x} v``, then the mean over prompts.
* :func:`weighted_dice`: per (prompt, channel) ``1 − (2 Σ vp·vy + 1) / (Σ vp + Σ vy + 1)``, then the
  mean over all of them.
* :func:`embedding_loss`: phase 1, :func:`masked_mse` over the thresholded valid region.
* :func:`sigmoid_focal`: element-wise ``α_t (1 − p_t)^γ BCE`` (RetinaNet); ``alpha=None`` no α weight.
* :func:`giou_loss`: ``1 − GIoU`` of ltrb distance pairs sharing an anchor point (proposals).
* :func:`segmentation_loss`: fine-tuning, per mask ``focal_w · mean focal + dice_w · dice`` against
  the ground truth plus ``iou_w · (IoU head − true IoU of the binarised mask)²``; see its docstring.
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


def embedding_loss(
    student: torch.Tensor, teacher: torch.Tensor, input_hw: list[tuple[int, int]], image_size: int
) -> torch.Tensor:
    """Phase 1: masked per-pixel MSE of ``(B, 256, E, E)`` embeddings over each image's un-padded
    region (``input_hw``: resized ``(h, w)`` inside the ``image_size`` square)."""
    grid = student.shape[-1]
    valid = valid_mask(input_hw, image_size, grid, threshold=True, device=student.device)
    return masked_mse(student, teacher, valid)


def sigmoid_focal(
    logits: torch.Tensor, target: torch.Tensor, alpha: float | None = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (same shape as ``logits``); ``target`` in {0, 1}."""
    t = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    pt = p * t + (1 - p) * (1 - t)
    loss = (1 - pt) ** gamma * ce
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GIoU loss of ltrb distance pairs ``(P, 4)`` sharing the same anchor point; mean over P."""
    pl, pt, pr, pb = pred.unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pa = (pl + pr) * (pt + pb)
    ta = (tl + tr) * (tt + tb)
    iw = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    ih = torch.minimum(pt, tt) + torch.minimum(pb, tb)
    inter = iw.clamp(min=0) * ih.clamp(min=0)
    union = pa + ta - inter
    iou = inter / union.clamp(min=1e-6)
    enclose = (torch.maximum(pl, tl) + torch.maximum(pr, tr)) * (
        torch.maximum(pt, tt) + torch.maximum(pb, tb)
    )
    giou = iou - (enclose - union) / enclose.clamp(min=1e-6)
    return (1 - giou).mean()


def mask_iou_of_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with bool/{0,1} ``target``, both ``(N, C, H, W)`` → ``(N, C)``; an empty
    union counts as IoU 1 (nothing predicted, nothing there)."""
    p = logits > 0
    t = target > 0.5
    inter = (p & t).flatten(2).sum(-1).float()
    union = (p | t).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    iou_pred: torch.Tensor,
    *,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    focal_gamma: float = 2.0,
    focal_alpha: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Fine-tuning loss of ``logits (N, C, H, W)`` against ``target (N, 1 or C, H, W)`` and the IoU head
    ``iou_pred (N, C)``. Per (prompt, token): mean focal over pixels (α off by default, SAM's 20:1
    focal:dice), Dice with +1 smoothing, squared error of the IoU head to the true IoU of the mask.
    With C > 1 tokens only the token of least mask loss per prompt gets the mask loss (SAM's ambiguity
    rule); the IoU head is trained on every token (mean over C). Returns
    ``(total, {"focal", "dice", "iou"})``, each the mean over prompts."""
    lg = logits.float()
    y = target.float().expand_as(lg)
    focal = sigmoid_focal(lg, y, focal_alpha, focal_gamma).flatten(2).mean(-1)  # (N, C)
    p = torch.sigmoid(lg).flatten(2)
    yy = y.flatten(2)
    dice = 1.0 - (2.0 * (p * yy).sum(-1) + 1.0) / (p.sum(-1) + yy.sum(-1) + 1.0)  # (N, C)
    with torch.no_grad():
        true_iou = mask_iou_of_logits(lg, y)
    iou_err = (iou_pred.float() - true_iou).pow(2)  # (N, C)
    mask_loss = focal_weight * focal + dice_weight * dice
    best = mask_loss.argmin(dim=1)
    rows = torch.arange(lg.shape[0], device=lg.device)
    total = mask_loss[rows, best] + iou_weight * iou_err.mean(dim=1)
    parts = {"focal": focal[rows, best].mean(), "dice": dice[rows, best].mean(), "iou": iou_err.mean()}
    return total.mean(), parts
