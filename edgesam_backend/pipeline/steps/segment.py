"""The ``segment`` step: prompts → masks through the decoder, in batches.

* Prompted modes (boxes / points / proposals / detections): prompts with the same shape (number of
  points, box or not) are decoded together, ``points_per_batch`` per decoder call, with no padding; one
  mask token is kept per prompt: with ``multimask_output`` the best of tokens 1-3 by ``quality_score``,
  else token 0. Default (``null``): multimask for point-only prompts, single mask for prompts with a box
  (SAM's advice). The chosen token's low-res logits stay in memory for ``refine`` iterations.
* Grid mode (``prompt.grid``, either strategy): SAM's automatic mask generator with the grid,
  these decoder settings and the first ``refine`` step's filters (applied before upscaling, as SAM
  does); ``multimask_output`` false keeps one token per point instead of three.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from ...runtime import transforms
from ...runtime.amg import AutomaticMaskGenerator
from ...runtime.masks import STABILITY_OFFSET
from ...runtime.prompts import pack_prompt
from ..base import ImageJob, MaskSet, PromptStep, RefineStep, SegmentStep, StepConfig
from ..maskops import rle_encode
from ..records import Prompt
from ..types import PositiveInt


class SegmentConfig(StepConfig):
    """Decoder settings."""

    points_per_batch: PositiveInt = Field(64, description="prompts per decoder call")
    multimask_output: bool | None = Field(
        None,
        description="best of 3 masks per prompt (null: yes for points, no with a box; grid: all 3 kept)",
    )
    quality_score: Literal["stability", "iou"] = Field(
        "stability",
        description="score that picks masks, filters and ranks (EdgeSAM's IoU head is not distilled)",
    )
    stability_score_offset: float = Field(1.0, gt=0.0, description="logit offset of the stability score")


def decode_prompts(
    job: ImageJob,
    prompts: list[Prompt],
    batch: int,
    multimask: bool | None,
    quality: str,
    offset: float = STABILITY_OFFSET,
    mask_input: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Decode ``prompts`` → chosen-token ``low_res (K, 256, 256)``, ``iou (K,)``, ``stability (K,)``.

    Prompts of one shape (:meth:`Prompt.signature`) share decoder calls of at most ``batch``; the token
    is chosen by :meth:`BasePredictor.decode` (best of tokens 1-3 by ``quality`` with multimask, else
    token 0). With ``mask_input`` (``(K, 256, 256)`` logits, refinement) token 0 is used for every prompt.
    """
    k = len(prompts)
    emb = job.embedding
    size = transforms.low_res_size(emb.image_size)
    low = np.zeros((k, size, size), np.float32)
    iou = np.zeros(k, np.float32)
    stab = np.zeros(k, np.float32)
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.signature(), []).append(i)
    for idx in groups.values():
        multi = multimask if multimask is not None else prompts[idx[0]].box is None
        select = quality if multi and mask_input is None else "single"
        for s in range(0, len(idx), batch):
            sel = idx[s : s + batch]
            packed = [
                pack_prompt(
                    prompts[i].points or None,
                    prompts[i].point_labels or None,
                    prompts[i].box,
                    emb.original_hw,
                    emb.image_size,
                )
                for i in sel
            ]
            coords = np.concatenate([c for c, _ in packed], axis=0)
            labels = np.concatenate([lab for _, lab in packed], axis=0)
            mi = None if mask_input is None else mask_input[sel][:, None]
            d = job.predictor.decode(coords, labels, mi, emb, select=select, stability_offset=offset)
            job.stats["decoder_calls"] = job.stats.get("decoder_calls", 0) + 1
            low[sel] = d.low_res_logits[:, 0]
            iou[sel] = d.iou_predictions[:, 0]
            stab[sel] = d.stability_scores[:, 0]
    return low, iou, stab


def upscale_to_rles(low: NDArray[np.float32], job: ImageJob) -> list[dict[str, Any]]:
    """Chosen-token logits ``(K, 256, 256)`` → full-resolution masks (the predictor's lazy, chunked
    upscaling, bit-identical to ``predict``) → COCO RLEs."""
    return [rle_encode(m) for chunk in job.predictor.iter_masks(low, job.embedding) for m in chunk]


def grid_prompt(record: dict[str, Any]) -> dict[str, Any]:
    """The prompt of an everything-mode record: its grid point, or (coverage mode on a model with the
    region proposal head) ``kind: proposal`` for a mask from a proposal box."""
    crop = [int(v) for v in record["crop_box"]]
    if not record["point_coords"]:
        return {"kind": "proposal", "crop_box": crop}
    return {
        "kind": "grid",
        "point": [round(float(v), 3) for v in record["point_coords"][0]],
        "crop_box": crop,
    }


class Segment(SegmentStep):
    Config = SegmentConfig

    def __init__(self, config: SegmentConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._amg: tuple[Any, AutomaticMaskGenerator] | None = None

    def _generator(
        self, job: ImageJob, prompt_step: PromptStep, options: dict[str, Any]
    ) -> AutomaticMaskGenerator:
        key = (id(job.predictor), tuple(sorted(options.items())))
        if self._amg is None or self._amg[0] != key:
            c: SegmentConfig = self.config
            gen = AutomaticMaskGenerator(
                job.predictor,
                points_per_batch=c.points_per_batch,
                stability_score_offset=c.stability_score_offset,
                quality_score=c.quality_score,
                multimask=1 if c.multimask_output is False else 3,
                output_mode="coco_rle",
                **prompt_step.grid_options(),
                **options,
            )
            self._amg = (key, gen)
        return self._amg[1]

    def segment(self, job: ImageJob, prompt_step: PromptStep, refine_steps: list[RefineStep]) -> MaskSet:
        if prompt_step.mode == "grid":
            return self._grid(job, prompt_step, refine_steps)
        c: SegmentConfig = self.config
        prompts = prompt_step.prompts(job.item, job.embedding)
        job.stats["prompts"] = len(prompts)
        hw = job.hw
        if not prompts:
            return MaskSet(
                "prompts",
                hw,
                [],
                np.zeros(0, np.float32),
                np.zeros(0, np.float32),
                [],
                [],
                c.quality_score,
                [],
                None,
            )
        low, iou, stab = decode_prompts(
            job, prompts, c.points_per_batch, c.multimask_output, c.quality_score, c.stability_score_offset
        )
        rles = upscale_to_rles(low, job)
        return MaskSet(
            mode="prompts",
            hw=hw,
            rles=rles,
            iou=iou,
            stability=stab,
            prompts=[p.to_dict() for p in prompts],
            labels=[p.label for p in prompts],
            quality=c.quality_score,
            source_prompts=prompts,
            low_res=low,
        )

    def _grid(self, job: ImageJob, prompt_step: PromptStep, refine_steps: list[RefineStep]) -> MaskSet:
        c: SegmentConfig = self.config
        options: dict[str, Any] = {}
        owner = None
        for step in refine_steps:
            options = step.amg_options()
            if options:
                owner = step.ctx.index
                break
        gen = self._generator(job, prompt_step, options)
        crops = prompt_step.grid_options().get("crop_n_layers", 0)
        records, st = gen.generate(job.image if crops else job.embedding, return_stats=True)
        job.stats.update({"prompts": st["prompts"], "decoder_calls": st["decoder_calls"]})
        if st["mode"] == "coverage":
            job.stats["proposal_prompts"] = st["proposal_prompts"]
        if crops:
            job.stats["encoder_calls"] = st["encoder_calls"]
        return MaskSet(
            mode="grid",
            hw=job.hw,
            rles=[r["segmentation"] for r in records],
            iou=np.array([r["predicted_iou"] for r in records], np.float32),
            stability=np.array([r["stability_score"] for r in records], np.float32),
            prompts=[grid_prompt(r) for r in records],
            labels=[None] * len(records),
            quality=c.quality_score,
            amg_owner=owner,
        )


__all__ = ["Segment", "SegmentConfig", "decode_prompts", "upscale_to_rles"]
