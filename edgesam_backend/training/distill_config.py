"""Configuration models of ``edgesam distill phase1|phase2|cache`` and ``edgesam eval`` (YAML → pydantic).

Defaults are the official recipe (``../shared/docs/edgesam-training.md``): phase 1 is 10 epochs of
encoder-only KD at batch 64, base LR 0.1 scaled by batch/512, 5 warm-up epochs, weight decay 0.01,
clip 5.0; phase 2 is 5 epochs at batch 16, base LR 3.2e-3 (→ 1e-4), no warm-up, weight decay 0.05,
clip 0.01, up to 16 prompts per image, 2 decode iterations, BCE + Dice 5/5. Every size scales with
``image_size`` (embedding ``image_size/16``, masks ``image_size/4``). Unknown keys are errors.
JSON Schemas: ``schemas/distill-phase1.schema.json``, ``schemas/distill-phase2.schema.json``,
``schemas/eval.schema.json``, ``schemas/rpn-train.schema.json`` for ``edgesam train-rpn`` and
``schemas/finetune.schema.json`` for ``edgesam finetune``
(regenerate with ``python -m edgesam_backend.training.schemas``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from ..yamlconfig import StrictModel as _Strict


def _check_image_size(v: int) -> int:
    if v < 64 or v % 32:
        raise ValueError("image_size must be a multiple of 32 and at least 64")
    return v


#: A model input side: a multiple of 32, at least 64 (used by the distillation and evaluation configs).
ImageSize = Annotated[int, AfterValidator(_check_image_size)]


class DataConfig(_Strict):
    """A dataset in SA-1B layout (``<stem>.jpg`` + ``<stem>.json`` per image, RLE masks, boxes and
    ``point_coords``) or COCO instances (one json; points are drawn inside each mask)."""

    format: Literal["sa1b", "coco"] = Field(description="sa1b: per-image json files; coco: instances json")
    images: Path = Field(description="folder of the images (SA-1B: images and their json files)")
    annotations: Path | None = Field(
        None, description="COCO instances json (coco); optional folder of the per-image jsons (sa1b)"
    )
    file_list: Path | None = Field(
        None, description="optional text file of image file names to use (one a line), e.g. sa_train_subset"
    )
    max_images: int | None = Field(None, gt=0, description="use only the first N images (sorted)")
    coco_point: Literal["random", "center"] = Field(
        "random",
        description="COCO has no clicks: one point per mask, uniform inside it (seeded) or the mask centre",
    )
    skip_crowd: bool = True
    min_mask_area: int = Field(1, ge=0, description="drop masks with fewer pixels (original frame)")


class TeacherConfig(_Strict):
    """The SAM teacher: ViT kind and checkpoint (official ``sam_vit_*.pth`` layout)."""

    kind: Literal["vit_b", "vit_l", "vit_h", "tiny"] = "vit_h"
    checkpoint: Path | None = Field(None, description="sam_vit_h_4b8939.pth etc.; null needs random_init")
    random_init: bool = Field(False, description="allow random teacher weights (tests, benchmarks)")
    seed: int = Field(0, description="seed of the random teacher weights")
    amp: bool = Field(True, description="run the teacher encoder under autocast on CUDA (as official)")

    @model_validator(mode="after")
    def _weights(self) -> TeacherConfig:
        if self.checkpoint is None and not self.random_init:
            raise ValueError("give teacher.checkpoint (a SAM checkpoint) or set teacher.random_init: true")
        return self


class StudentConfig(_Strict):
    """The student encoder. ``edge_sam`` is the real RepViT-M1 + fuse neck (official layout);
    ``slim`` is the same topology with 1 block per stage and narrow widths for quick experiments."""

    arch: Literal["edge_sam", "slim"] = "edge_sam"
    slim_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    upsample_mode: Literal["bicubic", "bilinear"] = "bicubic"
    sync_bn: bool = Field(False, description="SyncBatchNorm under DDP (official phase 1 uses it)")


class CacheConfig(_Strict):
    """Teacher-embedding cache: fp16 shards + a JSON-lines manifest; built once, resumable."""

    dir: Path = Field(description="cache folder (shards, manifest*.jsonl, meta.json)")
    shard_size: int = Field(64, gt=0, description="embeddings per shard file")
    batch_size: int = Field(4, gt=0, description="teacher batch size while building")
    verify_hash: bool = Field(True, description="check each image's sha256 against the manifest on read")


class OptimConfig(_Strict):
    """AdamW + per-iteration warm-up/cosine (timm ``CosineLRScheduler``, t not shifted by warm-up).

    LRs are ``base * total_batch / lr_scale_batch`` (the linear scaling rule) unless
    ``linear_scaling`` is false."""

    epochs: int = Field(gt=0)
    batch_size: int = Field(gt=0, description="images per process (GPU); total = batch_size * world size")
    base_lr: float = Field(gt=0)
    warmup_lr: float = Field(ge=0)
    min_lr: float = Field(ge=0)
    warmup_epochs: float = Field(0.0, ge=0)
    weight_decay: float = Field(ge=0)
    clip_grad: float | None = Field(gt=0, description="global grad L2 norm clip (None: off)")
    linear_scaling: bool = True
    lr_scale_batch: int = Field(512, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


def _phase1_optim() -> OptimConfig:
    return OptimConfig(
        epochs=10,
        batch_size=8,
        base_lr=0.1,
        warmup_lr=5e-7,
        min_lr=5e-6,
        warmup_epochs=5,
        weight_decay=0.01,
        clip_grad=5.0,
    )


def _phase2_optim() -> OptimConfig:
    return OptimConfig(
        epochs=5,
        batch_size=2,
        base_lr=3.2e-3,
        warmup_lr=0.0,
        min_lr=3.2e-4,
        warmup_epochs=0,
        weight_decay=0.05,
        clip_grad=0.01,
    )


class _RunConfig(_Strict):
    data: DataConfig
    teacher: TeacherConfig
    student: StudentConfig = StudentConfig()
    cache: CacheConfig | None = Field(
        None, description="teacher-embedding cache; null runs the teacher encoder online every step"
    )
    output_dir: Path = Field(description="checkpoints, metrics and the final state_dict go here")
    image_size: ImageSize = Field(1024, description="model input side (1024 official; 128/256 for CPU tests)")
    hflip: float = Field(
        0.0, ge=0, le=1, description="horizontal-flip probability (augmentation; needs the online teacher)"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="student autocast dtype (fp16 with a grad scaler on CUDA; official: fp32)"
    )
    seed: int = Field(0, description="seed; each rank uses seed + rank")
    same_order_every_epoch: bool = Field(
        True, description="reuse epoch 0's image order every epoch (the official NO_RAND quirk)"
    )
    shuffle: bool = True
    num_workers: int = Field(0, ge=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many steps (schedule unchanged)")
    checkpoint_every: int = Field(500, ge=0, description="write last.pth every N steps (and every epoch)")
    log_every: int = Field(20, ge=0)
    resume: bool = True
    device: str | None = Field(None, description="cpu / cuda / cuda:N (default: cuda:LOCAL_RANK if any)")
    threads: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _augment(self) -> _RunConfig:
        if self.hflip > 0 and self.cache is not None:
            raise ValueError(
                "hflip augmentation needs the online teacher (cache: null): cached embeddings are of "
                "the un-augmented images"
            )
        return self


class Phase1Config(_RunConfig):
    """``edgesam distill phase1``: encoder-only KD (per-pixel MSE to the teacher embedding)."""

    optim: OptimConfig = Field(default_factory=_phase1_optim)
    pixel_loss_weight: float = Field(1.0, gt=0)
    init_encoder_from: Path | None = Field(
        None,
        description="encoder weights to start from: an EdgeSAM state_dict (image_encoder.*) or RepViT "
        "ImageNet weights (features.*); tensors that do not fit are skipped (official: ImageNet RepViT-M1)",
    )


class Phase2Config(_RunConfig):
    """``edgesam distill phase2``: prompt-in-the-loop KD of encoder + decoder."""

    optim: OptimConfig = Field(default_factory=_phase2_optim)
    init_from: Path | None = Field(
        None, description="phase-1 output (last.pth or the final state_dict): the student encoder"
    )
    init_decoder_from_teacher: bool = True
    freeze_prompt_encoder: bool = True
    freeze_image_encoder: bool = False
    freeze_mask_decoder: bool = False
    max_prompts: int = Field(16, gt=0, description="prompts per image, drawn with replacement if more")
    decode_iters: int = Field(2, gt=0, description="decode rounds; round > 0 adds a disagreement point")
    points_per_refine_iter: int = Field(1, gt=0)
    iter_on_box: bool = True
    box_prob: float = Field(0.5, ge=0, le=1, description="probability that a batch uses boxes (else points)")
    multimask_output: Literal[1, 3, 4] = Field(4, description="tokens supervised for point prompts")
    multimask_on_box: bool = False
    bce_weight: float = 5.0
    dice_weight: float = 5.0
    temperature: float = Field(1.0, gt=0)
    min_error_pixels_per_point: int = Field(10, ge=0, description="fewer → a dummy point (label -2)")


class EvalModelConfig(_Strict):
    """One model to evaluate: an EdgeSAM checkpoint or a SAM teacher."""

    name: str
    type: Literal["edge_sam", "sam"] = "edge_sam"
    checkpoint: Path | None = Field(None, description="state_dict path; null = random (tests)")
    kind: Literal["vit_b", "vit_l", "vit_h", "tiny"] = Field("vit_h", description="SAM kind (type: sam)")
    arch: Literal["edge_sam", "slim"] = "edge_sam"
    slim_widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    seed: int = 0


class EvalConfig(_Strict):
    """``edgesam eval``: mIoU with box / centre-point prompts and +1/+2 refinement points."""

    data: DataConfig
    models: list[EvalModelConfig] = Field(min_length=1)
    output: Path = Field(description="the JSON report")
    image_size: ImageSize = 1024
    prompts: list[Literal["box", "point"]] = Field(["box", "point"])
    refine_iters: int = Field(2, ge=0, description="refinement points after the first prompt")
    num_multimask_outputs: Literal[1, 3, 4] = 1
    select: Literal["first", "score", "oracle"] = Field(
        "first", description="with >1 outputs: IoU-head argmax (score) or best against GT (oracle)"
    )
    max_instances_per_image: int | None = Field(
        None, gt=0, description="draw this many instances per image with replacement (SA-1K: 64)"
    )
    batch_prompts: int = Field(64, gt=0, description="prompts per decoder batch")
    seed: int = 0
    device: str | None = None
    threads: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _names(self) -> EvalConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        return self
