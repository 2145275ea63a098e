"""Training and evaluation of the region proposal module on COCO-format box annotations.

``edgesam train-rpn config.yaml``: encoder frozen by default (as in the paper, so the RPN can be
switched off without changing the model), sigmoid focal loss on objectness + GIoU box regression
with FCOS-style centre sampling and per-level size ranges, AdamW with linear warm-up and cosine
decay, periodic checkpoints (``last.pth``, full EdgeSAM state_dict with ``rpn_head.*`` keys plus
optimiser state) and resume, and proposal recall at IoU 0.5 / 0.75 for K = 10 / 100. ``device``,
``precision`` (autocast of the encoder + head; the loss in fp32) and DDP under ``torchrun`` (each
rank a ``rank::world`` slice of every step's ``batch_size * world`` images; rank 0 validates and
saves) are those of :mod:`.loop`, as for ``finetune`` and ``distill``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import nn

from ..formats.coco import read_coco
from ..model.checkpoint import load_edge_sam, with_metadata
from ..model.edge_sam import EdgeSam, build_edge_sam
from ..runtime import transforms
from ..runtime.boxes import box_iou, nms
from ..runtime.image import load_image
from ..runtime.proposals import decode_proposals, location_points
from ..yamlconfig import StrictModel
from .loop import (
    LoopSettings,
    autocast,
    check_device,
    finish_run,
    num_threads,
    run_loop,
    shuffled_batches,
    start_run,
    wrap_ddp,
)
from .losses import giou_loss, sigmoid_focal
from .schedule import adamw, warmup_cosine

#: Box-size ranges (max side, model-frame pixels) assigned to P3..P6.
SIZE_RANGES = ((0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, math.inf))


class RpnTrainConfig(StrictModel):
    """Configuration of ``edgesam train-rpn`` (YAML keys = field names; unknown keys are errors)."""

    train_images: Path = Field(description="folder with the training images")
    train_annotations: Path = Field(description="COCO instances json (boxes) for the training images")
    val_images: Path | None = None
    val_annotations: Path | None = None
    output_dir: Path = Field(description="checkpoints and metrics go here")
    checkpoint: str | None = Field(None, description="EdgeSAM weights (name or path); None = random init")
    input_size: int = Field(1024, description="model input side; 1024 for real use, 256 for CPU tests")
    freeze_encoder: bool = True
    max_steps: int = Field(2000, gt=0)
    batch_size: int = Field(4, gt=0)
    lr: float = Field(1e-3, gt=0)
    encoder_lr: float | None = Field(None, description="encoder LR when not frozen (default: lr)")
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 10.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    box_loss_weight: float = 2.0
    center_radius: float = 1.5
    checkpoint_every: int = 200
    eval_every: int = 0
    eval_max_images: int = 200
    log_every: int = 20
    seed: int = Field(0, description="seed; each rank uses seed + rank")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype of encoder + head (fp16 scaled on CUDA; the loss is fp32)"
    )
    device: str | None = Field(None, description="cpu / cuda / cuda:N (default: cuda:LOCAL_RANK if any)")
    threads: int | None = None
    resume: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, v: str | None) -> str | None:
        return check_device(v)

    @field_validator("input_size")
    @classmethod
    def _multiple_of_64(cls, v: int) -> int:
        if v % 64 or v < 128:
            raise ValueError("input_size must be a multiple of 64 and at least 128")
        return v


class CocoBoxes:
    """COCO images + class-agnostic XYXY boxes (crowd boxes skipped), preprocessed to ``input_size``."""

    def __init__(self, images_dir: Path, annotations: Path, input_size: int) -> None:
        data = read_coco(annotations)
        self.images_dir = Path(images_dir)
        self.input_size = input_size
        self.images = sorted(data.images, key=lambda im: im.id)
        boxes: dict[Any, list[tuple[float, ...]]] = {im.id: [] for im in self.images}
        for a in data.annotations:
            if a.iscrowd or a.image_id not in boxes or a.bbox is None:
                continue
            x, y, w, h = a.bbox
            if w > 1 and h > 1:
                boxes[a.image_id].append((x, y, x + w, y + h))
        self.boxes = {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int]]:
        """``(input (3, S, S) float32, boxes (G, 4) model frame, input_hw, original_hw)``."""
        info = self.images[i]
        img = load_image(self.images_dir / info.file_name)
        resized = transforms.resize_longest_side(img, self.input_size)
        x = transforms.normalize_and_pad(resized, self.input_size)[0]
        hw = img.shape[:2]
        boxes = transforms.apply_boxes(self.boxes[info.id], hw, self.input_size)
        return x, boxes, resized.shape[:2], hw


def assign_targets(
    points: torch.Tensor, strides: torch.Tensor, gt: torch.Tensor, center_radius: float = 1.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS-style assignment. ``points (L, 2)``, ``strides (L,)``, ``gt (G, 4)`` XYXY →
    ``labels (L,)`` bool and ``targets (L, 4)`` ltrb distances (valid where labels)."""
    num = points.shape[0]
    if gt.numel() == 0:
        return torch.zeros(num, dtype=torch.bool), torch.zeros(num, 4)
    px, py = points[:, 0:1], points[:, 1:2]
    ltrb = torch.stack([px - gt[:, 0], py - gt[:, 1], gt[:, 2] - px, gt[:, 3] - py], dim=-1)  # (L, G, 4)
    inside = ltrb.min(dim=-1).values > 0
    cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
    r = center_radius * strides[:, None]
    central = ((px - cx).abs() < r) & ((py - cy).abs() < r)
    lo = torch.tensor([s[0] for s in SIZE_RANGES])
    hi = torch.tensor([s[1] for s in SIZE_RANGES])
    level = torch.log2(strides / 8).round().long()
    max_side = ltrb.max(dim=-1).values
    in_range = (max_side >= lo[level][:, None]) & (max_side <= hi[level][:, None])
    ok = inside & central & in_range
    area = ((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))[None].expand(num, -1)
    area = torch.where(ok, area, torch.full_like(area, math.inf))
    best_area, best = area.min(dim=1)
    labels = torch.isfinite(best_area)
    targets = ltrb[torch.arange(num), best]
    return labels, targets


def rpn_loss(
    model: EdgeSam, x: torch.Tensor, gts: list[torch.Tensor], cfg: RpnTrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal + GIoU loss for a batch ``x (B, 3, S, S)`` (on the model's device) with per-image GT
    boxes (model frame, on the CPU, where the targets are assigned); the forward under ``cfg.precision``
    autocast, the loss in fp32."""
    assert model.rpn_head is not None
    with autocast(x.device, cfg.precision):
        with torch.set_grad_enabled(not cfg.freeze_encoder):
            _, stages = model.image_encoder.forward_with_stages(x)
        if cfg.freeze_encoder:
            stages = [s.detach() for s in stages]
        logits, ltrb = model.rpn_head.flatten(*model.rpn_head(stages))
    logits, ltrb = logits.float(), ltrb.float()
    pts_np, strides_np = location_points(cfg.input_size)
    pts, strides = torch.from_numpy(pts_np), torch.from_numpy(strides_np)
    labels, targets = zip(*(assign_targets(pts, strides, g, cfg.center_radius) for g in gts), strict=True)
    lab = torch.stack(labels).to(x.device)
    tgt = torch.stack(targets).to(x.device)
    num_pos = max(1.0, float(lab.sum()))
    cls = sigmoid_focal(logits, lab, cfg.focal_alpha, cfg.focal_gamma).sum() / num_pos
    box = giou_loss(ltrb[lab], tgt[lab]) if lab.any() else ltrb.sum() * 0.0
    loss = cls + cfg.box_loss_weight * box
    return loss, {"loss": loss.item(), "cls": cls.item(), "box": box.item(), "pos": num_pos}


class RpnStep(nn.Module):
    """:func:`rpn_loss` of one batch as one ``forward`` (what DDP wraps)."""

    def __init__(self, model: EdgeSam, cfg: RpnTrainConfig) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg

    def forward(self, x: torch.Tensor, gts: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return rpn_loss(self.model, x, gts, self.cfg)


@torch.inference_mode()
def evaluate_recall(
    model: EdgeSam,
    data: CocoBoxes,
    max_images: int | None = None,
    ks: tuple[int, ...] = (10, 100),
    ious: tuple[float, ...] = (0.5, 0.75),
    nms_thresh: float = 0.7,
) -> dict[str, float]:
    """Proposal recall: fraction of GT boxes matched (IoU ≥ t) by one of the top-K proposals after NMS."""
    assert model.rpn_head is not None
    model.eval()
    dev = model.device
    hits = {(k, t): 0 for k in ks for t in ious}
    total = 0
    n = len(data) if max_images is None else min(len(data), max_images)
    for i in range(n):
        x, _, input_hw, original_hw = data.load(i)
        _, stages = model.image_encoder.forward_with_stages(torch.from_numpy(x)[None].to(dev))
        logits, ltrb = model.rpn_head.flatten(*model.rpn_head(stages))
        props = decode_proposals(
            logits.float().cpu().numpy(),
            ltrb.float().cpu().numpy(),
            input_hw,
            original_hw,
            score_thresh=0.0,
            input_size=data.input_size,
        )
        gt = data.boxes[data.images[i].id]
        total += len(gt)
        if len(gt) == 0 or len(props) == 0:
            continue
        keep = nms(props.boxes, props.scores, nms_thresh)
        for k in ks:
            iou = box_iou(gt, props.boxes[keep[:k]]).max(axis=1)
            for t in ious:
                hits[(k, t)] += int((iou >= t).sum())
    return {f"recall@{t}_K{k}": hits[(k, t)] / max(total, 1) for k in ks for t in ious} | {"num_gt": total}


def lr_at(step: int, cfg: RpnTrainConfig) -> float:
    """Linear warm-up to ``lr`` then cosine decay to ``lr * min_lr_ratio`` at ``max_steps``."""
    return warmup_cosine(step, cfg.lr, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)


def train_rpn(cfg: RpnTrainConfig, log: Any = print) -> dict[str, Any]:
    """Train (or resume) the region proposal head; returns the final metrics dict."""
    with num_threads(cfg.threads):
        return _train_rpn(cfg, log)


def _train_rpn(cfg: RpnTrainConfig, log: Any) -> dict[str, Any]:
    env, out, say = start_run(cfg.device, cfg.seed, cfg.output_dir, log)
    model = load_edge_sam(cfg.checkpoint, with_rpn=True) if cfg.checkpoint else None
    if model is None:
        model = build_edge_sam(with_rpn=True)  # seeded; DDP hands rank 0's weights to every rank
    assert model.rpn_head is not None
    train = CocoBoxes(cfg.train_images, cfg.train_annotations, cfg.input_size)
    val = CocoBoxes(cfg.val_images, cfg.val_annotations, cfg.input_size) if cfg.val_images else None
    if len(train) == 0:
        raise ValueError(f"no training images in {cfg.train_annotations}")

    for p in model.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.rpn_head.parameters()), "lr_scale": 1.0}]
    for p in model.rpn_head.parameters():
        p.requires_grad_(True)
    if not cfg.freeze_encoder:
        enc = list(model.image_encoder.parameters())
        for p in enc:
            p.requires_grad_(True)
        groups.append({"params": enc, "lr_scale": (cfg.encoder_lr or cfg.lr) / cfg.lr})
    model.to(env.device)
    opt = adamw(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    runner = wrap_ddp(RpnStep(model, cfg), env, find_unused=True)  # the encoder's neck has no grad here

    def batches(start: int) -> Iterator[list[int]]:
        return shuffled_batches(len(train), cfg.batch_size, cfg.seed, start, env.rank, env.world)

    def step_fn(idx: list[int], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        assert model.rpn_head is not None
        model.rpn_head.train()
        model.image_encoder.train(not cfg.freeze_encoder)
        items = [train.load(i) for i in idx]
        x = torch.from_numpy(np.stack([it[0] for it in items])).to(env.device)
        gts = [torch.from_numpy(it[1]) for it in items]
        loss, stats = runner(x, gts)
        return loss, {k: round(v, 6) for k, v in stats.items() if k != "loss"}

    def run_val(_step: int) -> dict[str, Any]:
        assert val is not None
        return evaluate_recall(model, val, cfg.eval_max_images) if env.is_main else {}

    settings = LoopSettings(
        output_dir=out,
        max_steps=cfg.max_steps,
        precision=cfg.precision,
        clip_grad=cfg.grad_clip,
        checkpoint_every=cfg.checkpoint_every,
        log_every=cfg.log_every,
        val_every=cfg.eval_every if val is not None else 0,
        resume=cfg.resume,
        name="rpn",
        config=cfg.model_dump(mode="json"),
    )
    res = run_loop(
        settings=settings,
        env=env,
        model=model,
        optimizer=opt,
        schedule=lambda step: lr_at(step, cfg),
        batches=batches,
        step_fn=step_fn,
        validate=run_val if val is not None else None,
        log=say,
    )
    metrics: dict[str, Any] = {"steps": res.step, "world_size": env.world, "seconds": round(res.seconds, 1)}
    metrics.update(res.loss_summary(parts=10))
    if val is not None:
        metrics["val"] = run_val(res.step)
    # with its input size, like a fine-tuned checkpoint: load_edge_sam/export/serve read it
    return finish_run(
        env, model, out / "edge_sam_rpn.pth", metrics, lambda sd: with_metadata(sd, cfg.input_size)
    )
