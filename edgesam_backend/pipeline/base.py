"""Step plugin interfaces and the in-memory data passed between them.

A step is a class with a ``role`` (``source``, ``prompt``, ``segment``, ``refine``, ``export``) constructed
as ``Step(config, ctx)`` where ``config`` is its pydantic config model and ``ctx`` a :class:`StepContext`.
Built-in and third-party steps implement the same base classes and register the same way (see
:mod:`edgesam_backend.pipeline.registry`).

Where each role runs:

* ``source`` and ``export`` run in the driver (the ``edgesam run`` process);
* ``prompt`` runs :meth:`PromptStep.bind` / :meth:`PromptStep.fingerprint` in the driver and
  :meth:`PromptStep.prompts` in the workers (threads of the local executor, or Ray actors);
* ``segment`` and ``refine`` run in the workers, once per image, on the image's :class:`ImageJob`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ..runtime.base import BasePredictor, ImageEmbedding
from ..yamlconfig import StrictModel
from .records import ImageItem, ImageResult, Prompt

ROLES = ("source", "prompt", "segment", "refine", "export")


class PipelineError(RuntimeError):
    """A user-facing problem while running a pipeline (printed as ``edgesam: error: ...``)."""


class StepConfig(StrictModel):
    """Base of every step's config model: unknown keys are errors."""


@dataclass
class StepContext:
    """What a step knows about its place in the pipeline.

    ``base_dir``: directory of the YAML file (relative paths in configs were already resolved against it);
    ``output_dir``: the run's output directory (exports write below it); ``index``: position in
    ``steps``; ``where``: ``file:line:col`` of the step in the YAML (for messages), or ``""``.
    """

    base_dir: Path
    output_dir: Path
    index: int = 0
    where: str = ""

    def error(self, kind: str, message: str) -> PipelineError:
        prefix = f"{self.where}: " if self.where else ""
        return PipelineError(f"{prefix}steps.{self.index} ({kind}): {message}")


class Step:
    """Base class: keeps the config and context."""

    role: ClassVar[str] = ""
    kind: str = ""

    def __init__(self, config: Any, ctx: StepContext) -> None:
        self.config = config
        self.ctx = ctx

    def error(self, message: str) -> PipelineError:
        return self.ctx.error(self.kind, message)


# --- sources ---------------------------------------------------------------------------------------


class SourceStep(Step):
    role: ClassVar[str] = "source"

    def items(self) -> list[ImageItem]:
        """The images in a deterministic order (``index`` = position)."""
        raise NotImplementedError

    def categories(self) -> list[str]:
        """Label names the source knows, in order (COCO categories, Label Studio labels)."""
        return []

    def category_ids(self) -> dict[str, int]:
        """Ids the source gives its categories (COCO), kept by exports that number categories."""
        return {}


# --- prompts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model can do (checked by prompt/refine steps before a run starts)."""

    has_proposals: bool
    supports_mask_input: bool


class PromptStep(Step):
    """Turns an image into decoder prompts.

    ``mode = "grid"`` steps instead describe SAM's everything mode (:meth:`grid_options`); the segment step
    then runs the automatic mask generator.
    """

    role: ClassVar[str] = "prompt"
    mode: ClassVar[str] = "prompts"

    def check_model(self, info: ModelInfo) -> None:
        """Raise :class:`PipelineError` if the model cannot serve this step."""

    def bind(self, items: list[ImageItem], categories: list[str], source_kind: str = "") -> None:
        """Driver side, once before the run: attach per-image inputs to ``item.extra`` (e.g. detections).
        ``source_kind``: the source step's kind (whether item ids are real ids or positions)."""

    def fingerprint(self, item: ImageItem) -> str:
        """A digest of the per-image prompt inputs (part of the result key); ``""`` when none."""
        return ""

    def prompts(self, item: ImageItem, embedding: ImageEmbedding) -> list[Prompt]:
        """Worker side: the prompts of one image, original pixels."""
        raise NotImplementedError

    def grid_options(self) -> dict[str, Any]:
        """Grid mode only: keyword arguments for the automatic mask generator
        (:class:`~edgesam_backend.runtime.amg.AutomaticMaskGenerator`)."""
        raise NotImplementedError


# --- masks in flight -------------------------------------------------------------------------------


@dataclass
class ImageJob:
    """One image inside a worker: the item, its pixels, its embedding (None in grid mode with crop layers:
    the generator encodes the crops itself), the predictor and the decoder batch size."""

    item: ImageItem
    image: NDArray[np.uint8]
    embedding: ImageEmbedding | None
    predictor: BasePredictor
    points_per_batch: int = 64
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class MaskSet:
    """Candidate masks of one image between segment and refine steps.

    ``rles``: pycocotools RLEs (full image); ``iou`` / ``stability``: ``(K,)`` decoder scores of the chosen
    token; ``prompts``: the JSON description of what produced each mask; ``labels``: class names;
    ``source_prompts`` and ``low_res`` (``(K, 256, 256)`` float32 logits of the chosen token): only in
    ``"prompts"`` mode, where refinement can re-decode; ``quality``: the ranking score kind;
    ``amg_owner``: grid mode, the index of the refine step whose filter / NMS / small-region options the
    automatic mask generator already applied (that step skips them).
    """

    mode: str
    hw: tuple[int, int]
    rles: list[dict]
    iou: NDArray[np.float32]
    stability: NDArray[np.float32]
    prompts: list[dict[str, Any]]
    labels: list[str | None]
    quality: str = "stability"
    source_prompts: list[Prompt] | None = None
    low_res: NDArray[np.float32] | None = None
    amg_owner: int | None = None

    def __len__(self) -> int:
        return len(self.rles)

    def scores(self) -> NDArray[np.float32]:
        return self.stability if self.quality == "stability" else self.iou

    def take(self, idx: Iterable[int]) -> MaskSet:
        idx = np.asarray(list(idx), dtype=np.int64)
        return MaskSet(
            mode=self.mode,
            hw=self.hw,
            rles=[self.rles[i] for i in idx],
            iou=self.iou[idx],
            stability=self.stability[idx],
            prompts=[self.prompts[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            quality=self.quality,
            source_prompts=None if self.source_prompts is None else [self.source_prompts[i] for i in idx],
            low_res=None if self.low_res is None else self.low_res[idx],
            amg_owner=self.amg_owner,
        )


class SegmentStep(Step):
    role: ClassVar[str] = "segment"

    def segment(self, job: ImageJob, prompt_step: PromptStep, refine_steps: list[RefineStep]) -> MaskSet:
        raise NotImplementedError


class RefineStep(Step):
    role: ClassVar[str] = "refine"

    def check_model(self, info: ModelInfo, prompt_mode: str) -> None:
        """Raise :class:`PipelineError` if this refinement cannot run with the model / prompt mode."""

    def amg_options(self) -> dict[str, Any]:
        """Grid mode: options this step hands to the automatic mask generator (which then applies them
        before upscaling, as SAM does). Only the first refine step that returns any is asked."""
        return {}

    def refine(self, masks: MaskSet, job: ImageJob) -> MaskSet:
        raise NotImplementedError


# --- exports ---------------------------------------------------------------------------------------


@dataclass
class ExportRun:
    """Run-wide facts for exports: label names (source categories, then labels first seen in results),
    the source's category ids where it has them, whether any mask is unlabeled, output dir, config hash."""

    output_dir: Path
    categories: list[str]
    config_hash: str
    pipeline_name: str
    category_ids: dict[str, int] = field(default_factory=dict)
    unlabeled: bool = False

    def labels(self, default_label: str) -> list[str]:
        """Category names for an export: the run's labels plus ``default_label`` for unlabeled masks."""
        cats = list(self.categories)
        if self.unlabeled and default_label not in cats:
            cats.append(default_label)
        return cats

    def load_image(self, item: ImageItem) -> NDArray[np.uint8]:
        from ..runtime.image import load_image
        from .storage import is_url, read_bytes

        return load_image(read_bytes(item.path) if is_url(item.path) else item.path)


class ExportStep(Step):
    """Streams the stored results in source order: ``begin``, ``add`` per image, ``finish``. Every export
    validates what it wrote before ``finish`` returns (raising :class:`PipelineError` otherwise)."""

    role: ClassVar[str] = "export"

    def begin(self, run: ExportRun) -> None:
        self.run = run

    def add(self, item: ImageItem, result: ImageResult) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, Any]:
        """Write, validate, and return a JSON summary (paths, counts)."""
        raise NotImplementedError

    def output_path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.ctx.output_dir / p


__all__ = [
    "ROLES",
    "ExportRun",
    "ExportStep",
    "ImageJob",
    "MaskSet",
    "ModelInfo",
    "PipelineError",
    "PromptStep",
    "RefineStep",
    "SegmentStep",
    "SourceStep",
    "Step",
    "StepConfig",
    "StepContext",
]
