"""Phase 2 of the distillation: prompt-in-the-loop KD of one batch (:func:`phase2_loss`).

Per batch a coin picks boxes or points; up to ``max_prompts`` per image (drawn with replacement if
more); the student (encoder + decoder) and the teacher decoder (on the teacher embedding) decode
the same prompts; BCE + Dice (:func:`.losses.mask_distill_loss`) against the teacher's binarised
masks on every output token, over the un-padded region; ``decode_iters`` rounds, each after the
first adding a point sampled from the student/teacher disagreement
(:func:`.prompts.sample_disagreement_points`). Masks are in the low-res frame (``image_size / 4``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..model.edge_sam import EdgeSam
from ..model.sam_vit import SamTeacher
from .data import Item
from .distill_config import Phase2Config
from .loop import autocast
from .losses import mask_distill_loss, valid_mask
from .prompts import sample_disagreement_points, select_by_iou, subsample_prompts


@dataclass
class Phase2Stats:
    prompt: str = ""
    num_prompts: int = 0
    bce: float = 0.0
    dice: float = 0.0
    points_sampled: int = 0
    dummy_points: int = 0


def phase2_loss(
    student: EdgeSam,
    teacher: SamTeacher,
    emb_s: torch.Tensor,
    emb_t: torch.Tensor,
    items: list[Item],
    cfg: Phase2Config,
    generator: torch.Generator,
    stats: Phase2Stats | None = None,
) -> torch.Tensor | None:
    """Prompt-in-the-loop loss of one batch (``None`` if no image has an instance)."""
    stats = stats if stats is not None else Phase2Stats()
    device = emb_s.device
    s = cfg.image_size
    img_idx, boxes, points, hws = [], [], [], []
    for b, it in enumerate(items):
        sel = subsample_prompts(len(it.boxes), cfg.max_prompts, generator)
        img_idx += [b] * len(sel)
        boxes.append(it.boxes[sel])
        points.append(it.points[sel])
        hws += [it.input_hw] * len(sel)
    if not img_idx:
        return None
    use_box = bool(torch.rand((), generator=generator) < cfg.box_prob)
    c_out = cfg.multimask_output if (not use_box or cfg.multimask_on_box) else 1
    iters = cfg.decode_iters if (not use_box or cfg.iter_on_box) else 1
    n = len(img_idx)
    idx = torch.tensor(img_idx, device=device)
    es, et = emb_s[idx], emb_t[idx]
    grid = 4 * emb_s.shape[-1]
    weight = valid_mask(hws, s, grid, threshold=False, device=device)  # (N, 1, M, M), fractional
    if use_box:
        box_in: torch.Tensor | None = torch.cat(boxes).to(device)
        coords: torch.Tensor | None = None
        labels: torch.Tensor | None = None
    else:
        box_in = None
        coords = torch.cat(points).to(device)[:, None, :]
        labels = torch.ones((n, 1), dtype=torch.long, device=device)
    dense_pe = student.prompt_encoder.get_dense_pe()
    stats.prompt, stats.num_prompts = ("box" if use_box else "point"), n
    total = emb_s.new_zeros(())
    prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    bce_sum = dice_sum = 0.0
    for it in range(iters):
        if it > 0 and prev is not None:
            with torch.no_grad():
                m_s, m_t, iou_t = prev
                inside = weight > 0
                s_bin, t_bin = (m_s > 0) & inside, (m_t > 0) & inside
                if c_out > 1:
                    s_bin, t_bin = select_by_iou(iou_t, s_bin, t_bin)
                else:
                    s_bin, t_bin = s_bin[:, 0], t_bin[:, 0]
                new_c, new_l = sample_disagreement_points(
                    s_bin,
                    t_bin,
                    cfg.points_per_refine_iter,
                    scale=s / grid,
                    min_pixels_per_point=cfg.min_error_pixels_per_point,
                    generator=generator,
                )
                stats.points_sampled += int((new_l != -2).sum())
                stats.dummy_points += int((new_l == -2).sum())
                coords = new_c if coords is None else torch.cat([coords, new_c], dim=1)
                labels = new_l if labels is None else torch.cat([labels, new_l], dim=1)
        pts = (coords, labels) if coords is not None else None
        sparse, dense = student.prompt_encoder(points=pts, boxes=box_in, masks=None)
        m_s, _ = student.mask_decoder(es, dense_pe, sparse, dense, c_out)
        with torch.no_grad():
            t_sparse, t_dense = teacher.prompt_encoder(points=pts, boxes=box_in, masks=None)
            m_t, iou_t = teacher.mask_decoder(et, dense_pe, t_sparse, t_dense, c_out)
        loss, bce, dice = mask_distill_loss(
            m_s,
            m_t,
            weight,
            bce_weight=cfg.bce_weight,
            dice_weight=cfg.dice_weight,
            temperature=cfg.temperature,
        )
        total = total + loss / iters
        bce_sum += float(bce.detach()) / iters
        dice_sum += float(dice.detach()) / iters
        prev = (m_s.detach().float(), m_t.float(), iou_t.float())
    stats.bce, stats.dice = bce_sum, dice_sum
    return total


class Phase2Module(nn.Module):
    """Student encoder + phase-2 loss as one ``forward`` (what DistributedDataParallel wraps). The
    teacher is held outside the module tree so DDP neither broadcasts nor syncs it."""

    def __init__(self, student: EdgeSam, teacher: SamTeacher, cfg: Phase2Config) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "_teacher", teacher)
        self.cfg = cfg

    def forward(
        self,
        x: torch.Tensor,
        emb_t: torch.Tensor,
        items: list[Item],
        gen: torch.Generator,
        stats: Phase2Stats,
    ) -> torch.Tensor | None:
        with autocast(x.device, self.cfg.precision):
            emb_s = self.student.image_encoder(x)
            return phase2_loss(self.student, self._teacher, emb_s, emb_t, items, self.cfg, gen, stats)
