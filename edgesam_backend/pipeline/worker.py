"""Per-image work shared by both executors: read + hash, decode, encode, segment + refine, store.

A *plan* (a plain, picklable dict built by the runner) carries the validated pipeline, the model files
and the config hash, so a Ray actor rebuilds exactly the steps the driver validated.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..runtime.base import BasePredictor, ImageEmbedding
from ..runtime.embedding_store import store_from_env
from . import storage
from .base import ImageJob, MaskSet, PromptStep, RefineStep, SegmentStep, StepContext
from .config import pipeline_from_dict
from .maskops import as_json_rle, rle_area, rle_bbox
from .records import ImageItem, ImageResult, MaskRecord, result_key
from .registry import load_registry


@dataclass
class Outcome:
    """What happened to one item: ``done`` (processed and stored), ``skipped`` (already stored) or
    ``failed`` (``stage`` read / decode / encode / segment / store, ``error`` the message). ``node`` and
    ``worker``: the Ray node id and actor id that processed it (empty for the local executor);
    ``model_loads``: how many models that worker's process had built by then (1 when loaded once);
    ``gpus``: the GPU ids Ray assigned to that actor (``ray.get_gpu_ids()``; empty without GPUs)."""

    index: int
    status: str
    key: str | None = None
    masks: int = 0
    error: str = ""
    stage: str = ""
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    node: str = ""
    worker: str = ""
    model_loads: int = 0
    gpus: list[str] = field(default_factory=list)


def read_item(item: ImageItem) -> tuple[bytes, str]:
    """The file's (or object's: ``item.path`` may be an fsspec URL) bytes and their sha256."""
    data = storage.read_bytes(item.path)
    return data, hashlib.sha256(data).hexdigest()


def short_error(exc: BaseException) -> str:
    msg = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, (OSError, ValueError, RuntimeError)):
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" at {Path(frame[0].filename).name}:{frame[0].lineno}" if frame else ""
        msg = f"{type(exc).__name__}: {msg}{where}"
    return msg.splitlines()[0][:500]


def _num(v: float) -> float | None:
    f = float(v)
    return None if not math.isfinite(f) else round(f, 6)


def to_records(masks: MaskSet) -> tuple[list[MaskRecord], int]:
    """Mask set → JSON records (empty masks dropped; their count returned)."""
    out, empty = [], 0
    scores = masks.scores()
    for i, rle in enumerate(masks.rles):
        rle = as_json_rle(rle)
        area = rle_area(rle)
        if area == 0:
            empty += 1
            continue
        out.append(
            MaskRecord(
                segmentation=rle,
                area=area,
                bbox=rle_bbox(rle),
                score=_num(scores[i]),  # type: ignore[arg-type]
                predicted_iou=_num(masks.iou[i]),  # type: ignore[arg-type]
                stability_score=_num(masks.stability[i]),  # type: ignore[arg-type]
                label=masks.labels[i],
                prompt=masks.prompts[i],
            )
        )
    return out, empty


_models_built = 0


def models_built() -> int:
    """How many models (onnxruntime session pairs) :class:`ImageProcessor` built in this process."""
    return _models_built


class ImageProcessor:
    """The model and the worker-side steps (prompt, segment, refine) of one worker."""

    def __init__(
        self, plan: dict[str, Any], predictor: BasePredictor | None = None, threads: int | None = None
    ) -> None:
        pipe = pipeline_from_dict(plan["pipeline"])
        reg = load_registry()
        base_dir, out_dir = Path(plan["base_dir"]), Path(plan["output_dir"])
        where = {int(k): v for k, v in plan.get("where", {}).items()}
        self.prompt: PromptStep | None = None
        self.segment: SegmentStep | None = None
        self.refines: list[RefineStep] = []
        for i, cfg in enumerate(pipe.steps):  # type: ignore[attr-defined]
            spec = reg[cfg.kind]
            if spec.role not in ("prompt", "segment", "refine"):
                continue
            step = spec.implementation(cfg, StepContext(base_dir, out_dir, i, where.get(i, "")))
            step.kind = cfg.kind
            if spec.role == "prompt":
                self.prompt = step  # type: ignore[assignment]
            elif spec.role == "segment":
                self.segment = step  # type: ignore[assignment]
            else:
                self.refines.append(step)  # type: ignore[arg-type]
        if self.prompt is None or self.segment is None:
            raise ValueError("a plan needs a prompt and a segment step")
        self.config_hash: str = plan["config_hash"]
        self.batch = int(getattr(self.segment.config, "points_per_batch", 64))
        self.needs_embedding = not (
            self.prompt.mode == "grid" and self.prompt.grid_options().get("crop_n_layers", 0) > 0
        )
        if predictor is None:
            from ..runtime.predictor import OnnxPredictor

            global _models_built
            _models_built += 1
            predictor = OnnxPredictor(
                plan["encoder"],
                plan["decoder"],
                intra_op_num_threads=threads,
                device=plan.get("device", "cpu"),
            )
        self.predictor = predictor
        # the persistent embedding store shared with the Label Studio backend (EDGESAM_EMBEDDING_STORE)
        self.store = None
        if self.needs_embedding and os.environ.get("EDGESAM_EMBEDDING_STORE"):
            from ..runtime.resolve import cached_sha256

            self.store = store_from_env(cached_sha256(Path(plan["encoder"])))

    def key(self, image_sha256: str, fingerprint: str) -> str:
        return result_key(image_sha256, self.config_hash, fingerprint)

    @staticmethod
    def decode(data: bytes, name: str | None = None) -> NDArray[np.uint8]:
        """Image bytes → ``(H, W, 3)`` uint8 RGB; errors call the image ``name`` (its file name)."""
        from ..runtime.image import load_image

        return load_image(data, name=name)

    def encode(self, image: NDArray[np.uint8], image_sha256: str | None = None) -> ImageEmbedding | None:
        """The image's embedding (None when the plan needs none), from the persistent store when it
        has one for these bytes (``image_sha256``: sha256 of the image file)."""
        if not self.needs_embedding:
            return None
        if self.store is not None and image_sha256:
            stored = self.store.get(image_sha256)
            if stored is not None:
                return stored
        emb = self.predictor.encode(image)
        if self.store is not None and image_sha256:
            self.store.put(image_sha256, emb)
        return emb

    def process(
        self,
        item: ImageItem,
        image: NDArray[np.uint8],
        embedding: ImageEmbedding | None,
        image_sha256: str,
        key: str,
        encode_s: float = 0.0,
    ) -> ImageResult:
        assert self.prompt is not None and self.segment is not None
        t0 = time.perf_counter()
        job = ImageJob(item, image, embedding, self.predictor, self.batch)
        masks = self.segment.segment(job, self.prompt, self.refines)
        for step in self.refines:
            masks = step.refine(masks, job)
        records, empty = to_records(masks)
        h, w = int(image.shape[0]), int(image.shape[1])
        stats = dict(job.stats)
        if empty:
            stats["empty_masks"] = empty
        if item.width is not None and item.height is not None and (item.width, item.height) != (w, h):
            stats["source_size"] = [item.width, item.height]
        stats["encode_s"] = round(encode_s, 4)
        stats["masks_s"] = round(time.perf_counter() - t0, 4)
        return ImageResult(key=key, image_sha256=image_sha256, width=w, height=h, masks=records, stats=stats)


__all__ = ["ImageProcessor", "Outcome", "models_built", "read_item", "short_error", "to_records"]
