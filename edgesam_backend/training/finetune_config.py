"""Configuration of ``edgesam finetune CONFIG.yaml`` (YAML → pydantic; unknown keys are errors).

Top-level keys scripts can rely on: ``train_images``, ``train_annotations``, ``val_images``,
``val_annotations``, ``format`` (``coco`` | ``labelstudio``), ``output_dir``, ``init`` (a checkpoint
name or path, or ``random``), ``image_size``, ``freeze`` (``none`` | ``encoder`` |
``encoder+prompt_encoder``), ``max_steps``, ``batch_size``, ``lr``, ``seed``; the rest have
defaults. JSON Schema: ``schemas/finetune.schema.json`` (regenerated with
``python -m edgesam_backend.training.schemas``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..yamlconfig import StrictModel as _Strict


class PromptSettings(_Strict):
    """Prompt-in-the-loop: a box or a point per object, then correction clicks with the previous
    low-res logits as mask input."""

    box_prob: float = Field(0.5, ge=0, le=1, description="probability that a batch starts from boxes")
    max_objects: int = Field(8, gt=0, description="objects per image per step (drawn without replacement)")
    correction_rounds: int = Field(2, ge=0, description="rounds after the first, each adding one click")
    multimask_on_point: bool = Field(
        True, description="a first point prompt trains the 3 ambiguity tokens (best one counts), as SAM"
    )
    box_noise: float = Field(
        0.1, ge=0, le=0.5, description="box corner jitter: std as a fraction of the box side (max 20 px)"
    )


class LossSettings(_Strict):
    """Mask loss ``focal_weight · focal + dice_weight · dice`` plus
    ``iou_weight · MSE(IoU head, true IoU)``."""

    focal_weight: float = Field(20.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    iou_weight: float = Field(1.0, ge=0)
    focal_gamma: float = Field(2.0, ge=0)


class FinetuneConfig(_Strict):
    """``edgesam finetune``: supervised training of EdgeSAM on ground-truth instance masks."""

    train_images: Path = Field(description="folder with the training images")
    train_annotations: Path = Field(description="COCO instances json or Label Studio JSON export")
    val_images: Path | None = Field(None, description="held-out images (validation mIoU)")
    val_annotations: Path | None = None
    format: Literal["coco", "labelstudio"] = Field(
        "coco",
        description="coco: instances with RLE/polygons; labelstudio: JSON export, brush/polygon results",
    )
    output_dir: Path = Field(description="last.pth, log.jsonl, metrics.json, edge_sam_finetuned.pth")
    init: str = Field(description="checkpoint name (edgesam weights list) or path, or 'random'")
    image_size: int = Field(1024, description="square model input side (1024 official; 256/512 cheaper)")
    freeze: Literal["none", "encoder", "encoder+prompt_encoder"] = Field(
        "none", description="parts kept fixed (the mask decoder always trains)"
    )
    max_steps: int = Field(2000, gt=0)
    batch_size: int = Field(4, gt=0, description="images per process and step")
    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    clip_grad: float | None = Field(1.0, gt=0, description="global grad L2 norm clip (null: off)")
    seed: int = 0
    prompts: PromptSettings = PromptSettings()
    loss: LossSettings = LossSettings()
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast dtype (fp16 scaled on CUDA)"
    )
    device: str | None = Field(None, description="cpu / cuda / cuda:N (default: cuda:LOCAL_RANK if any)")
    threads: int | None = Field(None, gt=0)
    val_every: int = Field(0, ge=0, description="validation mIoU every N steps (0: only at the end)")
    val_max_images: int | None = Field(None, gt=0)
    val_at_start: bool = Field(True, description="also validate the initial model (metrics: val_init)")
    checkpoint_every: int = Field(200, ge=0)
    log_every: int = Field(20, ge=0)
    resume: bool = True

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: int) -> int:
        if v < 64 or v % 64:
            raise ValueError("image_size must be a multiple of 64 and at least 64")
        return v

    @model_validator(mode="after")
    def _val_pair(self) -> FinetuneConfig:
        if (self.val_images is None) != (self.val_annotations is None):
            raise ValueError("give both val_images and val_annotations, or neither")
        return self
