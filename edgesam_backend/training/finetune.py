"""Supervised fine-tuning: ``edgesam finetune CONFIG.yaml`` (:class:`.finetune_config.FinetuneConfig`).

Per step and image up to ``prompts.max_objects`` ground-truth instances are drawn; a coin picks
boxes (jittered) or one point (uniform inside the mask) as the first prompt; then
``prompts.correction_rounds`` rounds each add one correction click
(:func:`.prompts.correction_clicks`: in the larger error region at its deepest pixel, FN → positive,
FP → negative) and feed the previous round's low-res logits (detached) as the mask input. Every
round's masks are upsampled bilinearly to the ``S x S`` model frame and scored against the ground
truth with :func:`.losses.segmentation_loss` (focal + Dice, IoU head MSE to the true IoU); the
rounds are averaged. A first point prompt trains the three ambiguity tokens (least loss counts).

Validation (:func:`validate`): mIoU ×100 in the un-padded model frame on the held-out images, for a
box prompt (token 0), one point at the mask's centre (token 0) and that point + 2 correction clicks
with mask input. Loop, DDP, AMP, checkpoints and resume: :mod:`.loop`. Output: ``output_dir`` /
``edge_sam_finetuned.pth`` (``{"model": state_dict, "image_size": S}``, which ``load_edge_sam`` and
``edgesam predict/export`` read), ``metrics.json``, ``log.jsonl``, ``last.pth``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import weights
from ..model.checkpoint import load_edge_sam, with_metadata
from ..model.edge_sam import EdgeSam, build_edge_sam
from ..runtime.masks import center_point
from .evaluate import mask_iou, miou
from .finetune_config import FinetuneConfig
from .finetune_data import MaskDataset, MaskSample, read_masks
from .loop import (
    Log,
    LoopSettings,
    autocast,
    finish_run,
    num_threads,
    run_loop,
    shuffled_batches,
    start_run,
    step_generator,
    wrap_ddp,
)
from .losses import segmentation_loss
from .prompts import correction_clicks
from .schedule import adamw, param_groups, warmup_cosine

FINAL_NAME = "edge_sam_finetuned.pth"


def build_model(cfg: FinetuneConfig, log: Log = print) -> EdgeSam:
    """EdgeSAM at ``cfg.image_size`` from ``cfg.init`` (``random``: seeded init), with ``cfg.freeze``."""
    if cfg.init == "random":
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = build_edge_sam(image_size=cfg.image_size)
    else:
        path = Path(cfg.init) if Path(cfg.init).is_file() else weights.checkpoint_path(cfg.init)
        model = load_edge_sam(path, image_size=cfg.image_size)
        log(f"initialised from {path}")
    frozen = {
        "none": (),
        "encoder": ("image_encoder",),
        "encoder+prompt_encoder": ("image_encoder", "prompt_encoder"),
    }
    for name in ("image_encoder", "prompt_encoder", "mask_decoder"):
        for p in getattr(model, name).parameters():
            p.requires_grad_(name not in frozen[cfg.freeze])
    return model


def _first_prompts(
    boxes: torch.Tensor, masks: torch.Tensor, use_box: bool, noise: float, gen: torch.Generator
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(box (N, 4) | None, coords (N, 1, 2) | None, labels (N, 1) | None)`` for N objects."""
    if use_box:
        side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1).repeat(1, 2)
        jitter = torch.randn(boxes.shape, generator=gen) * (noise * side).clamp(max=20.0)
        return boxes + jitter.to(boxes.device), None, None
    coords = []
    for m in masks.cpu():
        ys, xs = torch.nonzero(m, as_tuple=True)
        j = int(torch.randint(len(xs), (1,), generator=gen))
        coords.append([float(xs[j]), float(ys[j])])
    c = torch.tensor(coords, dtype=torch.float32, device=masks.device).reshape(-1, 1, 2)
    return None, c, torch.ones(c.shape[:2], dtype=torch.long, device=masks.device)


def decode(
    model: EdgeSam,
    emb: torch.Tensor,
    box: torch.Tensor | None,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    mask_in: torch.Tensor | None,
    tokens: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode N prompts on ``emb (N, 256, E, E)`` (model frame, ``S = 16E``) →
    ``(low (N, C, 4E, 4E), iou (N, C), full (N, C, S, S))`` logits."""
    pts = (coords, labels) if coords is not None else None
    sparse, dense = model.prompt_encoder(points=pts, boxes=box, masks=mask_in)
    low, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, tokens)
    s = model.image_size
    full = F.interpolate(low.float(), size=(s, s), mode="bilinear", align_corners=False)
    return low, iou, full


class FinetuneStep(nn.Module):
    """Encoder + prompt-in-the-loop loss of one batch as one ``forward`` (what DDP wraps)."""

    def __init__(self, model: EdgeSam, cfg: FinetuneConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, batch: list[MaskSample], gen: torch.Generator) -> tuple[torch.Tensor | None, dict]:
        cfg, m = self.cfg, self.model
        dev = m.pixel_mean.device
        x = torch.stack([b.image for b in batch]).to(dev)
        idx, gts, boxes = [], [], []
        for i, b in enumerate(batch):
            n = b.masks.shape[0]
            sel = torch.randperm(n, generator=gen)[: cfg.prompts.max_objects]
            idx += [i] * len(sel)
            gts.append(b.masks[sel])
            boxes.append(b.boxes[sel])
        if not idx:
            return None, {}
        gt = torch.cat(gts).to(dev)  # (N, S, S)
        box0 = torch.cat(boxes).to(dev)
        use_box = bool(torch.rand((), generator=gen) < cfg.prompts.box_prob)
        with autocast(dev, cfg.precision):
            with torch.set_grad_enabled(cfg.freeze == "none"):
                emb = m.image_encoder(x)
            emb = emb[torch.tensor(idx, device=dev)]
            box, coords, labels = _first_prompts(box0, gt, use_box, cfg.prompts.box_noise, gen)
            mask_in = None
            total, parts_sum = 0.0, {"focal": 0.0, "dice": 0.0, "iou": 0.0}
            rounds = 1 + cfg.prompts.correction_rounds
            for r in range(rounds):
                tokens = 3 if (r == 0 and not use_box and cfg.prompts.multimask_on_point) else 1
                low, iou, full = decode(m, emb, box, coords, labels, mask_in, tokens)
                loss, parts = segmentation_loss(
                    full,
                    gt[:, None],
                    iou,
                    focal_weight=cfg.loss.focal_weight,
                    dice_weight=cfg.loss.dice_weight,
                    iou_weight=cfg.loss.iou_weight,
                    focal_gamma=cfg.loss.focal_gamma,
                )
                total = total + loss / rounds
                for k, v in parts.items():
                    parts_sum[k] += float(v.detach()) / rounds
                if r + 1 < rounds:
                    with torch.no_grad():
                        pick = torch.zeros(len(idx), dtype=torch.long, device=dev)
                        if tokens > 1:
                            pick = iou.argmax(dim=1)
                        rows = torch.arange(len(idx), device=dev)
                        new_c, new_l = correction_clicks(full[rows, pick] > 0, gt)
                        mask_in = low[rows, pick][:, None].detach().float()
                    coords = new_c if coords is None else torch.cat([coords, new_c], dim=1)
                    labels = new_l if labels is None else torch.cat([labels, new_l], dim=1)
        info = {"prompt": "box" if use_box else "point", "objects": len(idx)}
        info.update({k: round(v, 5) for k, v in parts_sum.items()})
        return total, info  # type: ignore[return-value]


@torch.no_grad()
def validate(
    model: EdgeSam, data: MaskDataset, max_images: int | None = None, clicks: int = 2
) -> dict[str, Any]:
    """mIoU ×100 of box, centre-point and centre-point + ``clicks`` correction prompts (token 0)."""
    was_training = model.training
    model.eval()
    dev = model.pixel_mean.device
    ious: dict[str, list[np.ndarray]] = {"box": [], "point": [], f"point+{clicks}": []}
    for i in range(len(data) if max_images is None else min(len(data), max_images)):
        b = data[i]
        if b.masks.shape[0] == 0:
            continue
        h, w = b.input_hw
        gt = b.masks.to(dev)
        emb = model.image_encoder(b.image[None].to(dev)).expand(gt.shape[0], -1, -1, -1)
        _, _, full = decode(model, emb, b.boxes.to(dev), None, None, None, 1)
        ious["box"].append(mask_iou(full[:, 0, :h, :w] > 0, gt[:, :h, :w]))
        centre = [center_point(m.cpu().numpy()) for m in gt]
        coords = torch.tensor(centre, dtype=torch.float32, device=dev)[:, None]
        labels = torch.ones(coords.shape[:2], dtype=torch.long, device=dev)
        mask_in = None
        for r in range(1 + clicks):
            low, _, full = decode(model, emb, None, coords, labels, mask_in, 1)
            if r == 0:
                ious["point"].append(mask_iou(full[:, 0, :h, :w] > 0, gt[:, :h, :w]))
            if r == clicks:
                ious[f"point+{clicks}"].append(mask_iou(full[:, 0, :h, :w] > 0, gt[:, :h, :w]))
                break
            new_c, new_l = correction_clicks(full[:, 0] > 0, gt)
            coords, labels = torch.cat([coords, new_c], 1), torch.cat([labels, new_l], 1)
            mask_in = low[:, :1]
    model.train(was_training)
    out: dict[str, Any] = {
        f"miou_{k}": round(miou(np.concatenate(v)), 3) if v else None for k, v in ious.items()
    }
    out["instances"] = int(sum(len(v) for v in ious["box"]))
    return out


def finetune(cfg: FinetuneConfig, log: Log = print) -> dict[str, Any]:
    """Run (or resume) fine-tuning; returns the metrics dict (also in ``metrics.json``)."""
    with num_threads(cfg.threads):
        return _finetune(cfg, log)


def _finetune(cfg: FinetuneConfig, log: Log) -> dict[str, Any]:
    env, out, say = start_run(cfg.device, cfg.seed, cfg.output_dir, log)
    train = MaskDataset(read_masks(cfg.format, cfg.train_images, cfg.train_annotations), cfg.image_size)
    if len(train) == 0:
        raise ValueError(f"no training images in {cfg.train_annotations}")
    val = None
    if cfg.val_images is not None and cfg.val_annotations is not None:
        val = MaskDataset(read_masks(cfg.format, cfg.val_images, cfg.val_annotations), cfg.image_size)
    model = build_model(cfg, say).to(env.device)
    opt = adamw(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    runner = wrap_ddp(FinetuneStep(model, cfg), env, find_unused=True)

    def step_fn(batch: list[MaskSample], step: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        model.train()
        if cfg.freeze != "none":
            model.image_encoder.eval()  # frozen BatchNorm statistics stay as loaded
        return runner(batch, step_generator(cfg.seed, env.rank, step))

    def run_val(_step: int) -> dict[str, Any]:
        assert val is not None
        return validate(model, val, cfg.val_max_images) if env.is_main else {}

    last_exists = (out / "last.pth").is_file() and cfg.resume
    val_init = run_val(0) if val is not None and cfg.val_at_start and not last_exists else None
    settings = LoopSettings(
        output_dir=out,
        max_steps=cfg.max_steps,
        precision=cfg.precision,
        clip_grad=cfg.clip_grad,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        val_every=cfg.val_every if val is not None else 0,
        resume=cfg.resume,
        name="finetune",
        tag={"kind": "finetune", "image_size": cfg.image_size},
        config=cfg.model_dump(mode="json"),
    )
    res = run_loop(
        settings=settings,
        env=env,
        model=model,
        optimizer=opt,
        schedule=lambda t: warmup_cosine(t, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio),
        batches=lambda start: (
            [train[j] for j in idx]
            for idx in shuffled_batches(len(train), cfg.batch_size, cfg.seed, start, env.rank, env.world)
        ),
        step_fn=step_fn,
        validate=run_val if val is not None else None,
        log=say,
    )
    metrics: dict[str, Any] = {
        "steps": res.step,
        "start_step": res.start,
        "steps_this_run": len(res.losses),
        "world_size": env.world,
        "image_size": cfg.image_size,
        "seconds": round(res.seconds, 2),
        **res.loss_summary(parts=5),
    }
    if val_init is not None:
        metrics["val_init"] = val_init
    if val is not None:
        done = res.validations[-1] if res.validations and res.validations[-1]["step"] == res.step else None
        metrics["val"] = done or {"step": res.step, **run_val(res.step)}
    return finish_run(
        env, model, out / FINAL_NAME, metrics, package=lambda sd: with_metadata(sd, cfg.image_size)
    )
