"""Optimiser set-up and the learning-rate schedule of the official recipe.

* Linear scaling: every LR (peak, warm-up start, floor) is multiplied by ``total_batch / 512``.
* Per-iteration timm ``CosineLRScheduler`` with ``warmup_prefix=False``: for ``t < warm`` the LR
  rises linearly from the warm-up LR; afterwards it is ``min + ½(peak − min)(1 + cos(π t / T))``
  with ``t`` **not** shifted by the warm-up, so after a long warm-up it drops to the cosine value at
  ``t = warm`` (the midpoint, for 5 warm-up epochs of 10).
* :func:`warmup_cosine` (``train-rpn``, ``finetune``): linear warm-up ``lr·(t+1)/warm`` then cosine
  from ``lr`` to ``lr·min_ratio`` at ``total``.
* AdamW; no weight decay on 1-D parameters (norms, biases of any shape) or names ending in ``.bias``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .distill_config import OptimConfig


@dataclass(frozen=True)
class LrSchedule:
    """Scaled LRs and iteration counts of one run."""

    peak: float
    warmup_init: float
    floor: float
    warmup_iters: int
    total_iters: int

    def __call__(self, t: int) -> float:
        if t < self.warmup_iters:
            return self.warmup_init + t * (self.peak - self.warmup_init) / self.warmup_iters
        t = min(t, self.total_iters)
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * t / self.total_iters))


def warmup_cosine(step: int, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    """Step-based warm-up + cosine: ``lr * (step + 1) / warmup`` for ``step < warmup``, then
    ``floor + ½(lr − floor)(1 + cos(π p))`` with ``p = (step − warmup) / (total − warmup)`` clipped to 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def scaled_lr(base: float, total_batch: int, scale_batch: int = 512) -> float:
    """The linear scaling rule: ``base * total_batch / scale_batch``."""
    return base * total_batch / scale_batch


def make_schedule(cfg: OptimConfig, iters_per_epoch: int, world_size: int = 1) -> LrSchedule:
    total_batch = cfg.batch_size * world_size
    f = total_batch / cfg.lr_scale_batch if cfg.linear_scaling else 1.0
    return LrSchedule(
        peak=cfg.base_lr * f,
        warmup_init=cfg.warmup_lr * f,
        floor=cfg.min_lr * f,
        warmup_iters=round(cfg.warmup_epochs * iters_per_epoch),
        total_iters=max(1, cfg.epochs * iters_per_epoch),
    )


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into decayed (≥ 2-D weights) and not decayed (1-D, ``.bias``)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(groups: list[dict], lr: float, **kw: object) -> torch.optim.AdamW:
    """The one AdamW of the trainers: the fused kernel where every parameter is a float tensor on
    CPU/CUDA (same update rule; its step measured 3.5x faster than the default one on 2 CPU cores,
    EdgeSAM at 128 px), the default implementation otherwise."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None, **kw)  # type: ignore[arg-type]


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return adamw(param_groups(model, cfg.weight_decay), lr=cfg.base_lr, betas=cfg.betas, eps=cfg.eps)
