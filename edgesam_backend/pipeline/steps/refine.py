"""The ``refine`` step: better masks, fewer masks.

Operations, in this order (each off unless configured):

1. ``iterations``: mask-input refinement — the chosen mask's low-res logits are fed back as
   ``mask_input`` with the same prompt (batched like ``segment``; single-mask token), N times;
2. ``min_mask_region_area``: fill holes and remove islands smaller than this (SAM's
   ``remove_small_regions``, both passes);
3. ``smooth_kernel``: Gaussian smoothing of the outline (odd kernel size in pixels, >= 3);
4. quality filter: ``stability_score_thresh`` (and ``pred_iou_thresh`` when ``segment.quality_score`` is
   ``iou``, as in the automatic mask generator);
5. de-duplication: ``box_nms_thresh`` (box IoU) then ``mask_nms_thresh`` (mask IoU), ranking by the
   quality score;
6. ``max_masks``: keep the best N.

Prompt modes. Box / point / proposal / detection prompts: all of the above; masks stay in prompt order.
Grid mode (``prompt.grid``): the first ``refine`` step's quality filter, box NMS and
``min_mask_region_area`` run *inside* SAM's generator (before upscaling, exactly SAM's everything mode),
with SAM's defaults for unset values (``pred_iou_thresh`` 0.88, ``stability_score_thresh`` 0.95,
``box_nms_thresh`` 0.7); smoothing, mask NMS and ``max_masks`` run afterwards. ``iterations`` needs
prompts and is rejected with ``prompt.grid`` (the generator keeps no logits). Unset thresholds in prompted
modes mean "no filter / no NMS": every prompt keeps its mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from ...runtime.quality import (
    BOX_NMS_THRESH,
    PRED_IOU_THRESH,
    STABILITY_SCORE_THRESH,
    cleaned_rles,
    quality_keep,
)
from ..base import ImageJob, MaskSet, ModelInfo, RefineStep, StepConfig
from ..maskops import box_nms, mask_nms, rle_decode, rle_encode, smooth_mask
from ..types import Fraction, NonNegativeInt, PositiveInt
from .segment import decode_prompts, upscale_to_rles

#: SAM's defaults (the automatic mask generator's), used in grid mode for unset values.
SAM_DEFAULTS = {
    "pred_iou_thresh": PRED_IOU_THRESH,
    "stability_score_thresh": STABILITY_SCORE_THRESH,
    "box_nms_thresh": BOX_NMS_THRESH,
}


class RefineConfig(StepConfig):
    """Refinement, filtering and de-duplication (see the module docstring for the order)."""

    iterations: NonNegativeInt = Field(0, description="mask-input refinement passes (prompted modes)")
    min_mask_region_area: NonNegativeInt = Field(0, description="fill holes / drop islands below this area")
    smooth_kernel: NonNegativeInt = Field(0, description="Gaussian outline smoothing kernel (pixels, 0: off)")
    pred_iou_thresh: Fraction | None = Field(
        None, description="keep predicted IoU > this (quality_score: iou)"
    )
    stability_score_thresh: Fraction | None = Field(None, description="keep stability score >= this")
    box_nms_thresh: Fraction | None = Field(None, description="box-IoU NMS threshold (de-duplicate)")
    mask_nms_thresh: Fraction | None = Field(None, description="mask-IoU NMS threshold (de-duplicate)")
    max_masks: PositiveInt | None = Field(
        None, description="keep at most this many masks per image (best first)"
    )


class Refine(RefineStep):
    Config = RefineConfig

    @classmethod
    def check_config(cls, config: RefineConfig, info: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
        errors: list[tuple[tuple[Any, ...], str]] = []
        if config.iterations and info["prompt_mode"] == "grid":
            errors.append(
                (
                    ("iterations",),
                    "mask-input iterations need box/point prompts; prompt.grid masks come from SAM's "
                    "generator without logits (use min_mask_region_area / smooth_kernel instead)",
                )
            )
        if config.smooth_kernel and config.smooth_kernel < 3:
            errors.append((("smooth_kernel",), "smooth_kernel must be 0 (off) or at least 3"))
        return errors

    def check_model(self, info: ModelInfo, prompt_mode: str) -> None:
        if self.config.iterations and not info.supports_mask_input:
            raise self.error(
                "iterations need a decoder with mask input; this one has none (official ONNX export): "
                "re-export with `edgesam export`"
            )

    def amg_options(self) -> dict[str, Any]:
        c: RefineConfig = self.config
        return {
            "pred_iou_thresh": SAM_DEFAULTS["pred_iou_thresh"]
            if c.pred_iou_thresh is None
            else c.pred_iou_thresh,
            "stability_score_thresh": (
                SAM_DEFAULTS["stability_score_thresh"]
                if c.stability_score_thresh is None
                else c.stability_score_thresh
            ),
            "box_nms_thresh": SAM_DEFAULTS["box_nms_thresh"]
            if c.box_nms_thresh is None
            else c.box_nms_thresh,
            "min_mask_region_area": c.min_mask_region_area,
        }

    def refine(self, masks: MaskSet, job: ImageJob) -> MaskSet:
        c: RefineConfig = self.config
        done_in_amg = masks.mode == "grid" and masks.amg_owner == self.ctx.index
        st = job.stats
        if c.iterations and masks.mode == "prompts" and len(masks) and masks.low_res is not None:
            masks = self._iterate(masks, job)
        if c.min_mask_region_area and not done_in_amg:
            masks = self._small_regions(masks, c.min_mask_region_area)
        if c.smooth_kernel >= 3:
            masks = self._smooth(masks, c.smooth_kernel)
        if not done_in_amg:
            keep = quality_keep(
                masks.iou, masks.stability, masks.quality, c.pred_iou_thresh, c.stability_score_thresh
            )
            if not keep.all():
                st["filtered"] = st.get("filtered", 0) + int((~keep).sum())
                masks = masks.take(np.flatnonzero(keep))
            if c.box_nms_thresh is not None and len(masks):
                masks = self._nms(masks, box_nms(masks.rles, masks.scores(), c.box_nms_thresh), "box_nms", st)
        if c.mask_nms_thresh is not None and len(masks):
            masks = self._nms(masks, mask_nms(masks.rles, masks.scores(), c.mask_nms_thresh), "mask_nms", st)
        if c.max_masks is not None and len(masks) > c.max_masks:
            best = np.argsort(-masks.scores(), kind="stable")[: c.max_masks]
            masks = masks.take(np.sort(best) if masks.mode == "prompts" else best)
        return masks

    @staticmethod
    def _nms(masks: MaskSet, keep: np.ndarray, what: str, st: dict[str, Any]) -> MaskSet:
        removed = len(masks) - len(keep)
        if removed:
            st[f"removed_by_{what}"] = st.get(f"removed_by_{what}", 0) + removed
        # prompted modes keep prompt order; grid masks stay ranked (as the generator returns them)
        return masks.take(np.sort(keep) if masks.mode == "prompts" else keep)

    def _iterate(self, masks: MaskSet, job: ImageJob) -> MaskSet:
        assert masks.source_prompts is not None and masks.low_res is not None
        batch = job.points_per_batch
        low, iou, stab = masks.low_res, masks.iou, masks.stability
        for _ in range(self.config.iterations):
            low, iou, stab = decode_prompts(
                job, masks.source_prompts, batch, False, masks.quality, mask_input=low
            )
        job.stats["refine_iterations"] = job.stats.get("refine_iterations", 0) + self.config.iterations
        out = masks.take(range(len(masks)))
        out.low_res, out.iou, out.stability = low, iou, stab
        out.rles = upscale_to_rles(low, job)
        return out

    @staticmethod
    def _small_regions(masks: MaskSet, min_area: int) -> MaskSet:
        rles = list(masks.rles)
        for i, m in cleaned_rles(masks.rles, min_area):
            rles[i] = rle_encode(m)
        out = masks.take(range(len(masks)))
        out.rles = rles
        return out

    @staticmethod
    def _smooth(masks: MaskSet, kernel: int) -> MaskSet:
        out = masks.take(range(len(masks)))
        out.rles = [rle_encode(smooth_mask(rle_decode(r), kernel)) for r in masks.rles]
        return out


__all__ = ["SAM_DEFAULTS", "Refine", "RefineConfig"]
