"""The generator's decoder stages: encode, one batched decoder call, the batch post-processing, point
and box prompts in batches (feeding the coverage map), the budget and the per-crop NMS. Mixed into
:class:`~edgesam_backend.runtime.amg.generator.AutomaticMaskGenerator`, which sets the attributes."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .. import transforms
from ..base import ImageEmbedding
from ..boxes import nms
from ..decode import Decoded
from ..prompts import BOX_LABELS
from .batch import process_batch
from .candidates import Candidates
from .coverage import CoverageMap, accepted


class GenerationStopped(RuntimeError):
    """``should_stop`` returned True between two decoder batches."""


class DecodeStages:
    """Decoder stages of the generator (see module docs); needs the generator's settings."""

    predictor: Any
    points_per_batch: int
    multimask: int
    quality_score: str
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    coverage_stability_thresh: float
    box_nms_thresh: float
    max_prompts: int | None
    upscale_chunk_bytes: int

    def _encode(self, pixels: NDArray[np.uint8], st: dict[str, Any]) -> ImageEmbedding:
        t = time.perf_counter()
        emb = self.predictor.encode(pixels)
        st["encoder_s"] += time.perf_counter() - t
        st["encoder_calls"] += 1
        return emb

    def _decode(
        self,
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        emb: ImageEmbedding,
        st: dict[str, Any],
        multimask: int,
    ) -> Decoded:
        """One batched decoder call; every token of ``multimask`` kept, stability at the configured offset.
        Raises :class:`GenerationStopped` first when the generator's ``should_stop`` says so."""
        should_stop = getattr(self, "should_stop", None)
        if should_stop is not None and should_stop():
            raise GenerationStopped(f"stopped after {st['decoder_calls']} decoder batches")
        t = time.perf_counter()
        out = self.predictor.decode(
            coords,
            labels,
            None,
            emb,
            select="all",
            num_multimask_outputs=multimask,
            stability_offset=self.stability_score_offset,
        )
        st["decoder_s"] += time.perf_counter() - t
        st["decoder_calls"] += 1
        st["prompts"] += int(coords.shape[0])
        return out

    def _batch(
        self,
        d: Decoded,
        prompt_xy: NDArray[np.float64],
        prompt_index: NDArray[np.int64],
        crop_box: list[int],
        original_hw: tuple[int, int],
        emb: ImageEmbedding,
        st: dict[str, Any],
        thresholds: tuple[float | None, float | None] | None = None,
    ) -> Candidates:
        """``thresholds``: ``(pred_iou, stability)`` instead of the generator's (``None`` in one: off)."""
        piou, stab = (
            thresholds if thresholds is not None else (self.pred_iou_thresh, self.stability_score_thresh)
        )
        return process_batch(
            d,
            prompt_xy,
            prompt_index,
            crop_box,
            original_hw,
            emb,
            self.quality_score,
            piou,
            stab,
            self.upscale_chunk_bytes,
            st,
        )

    def _box_parts(
        self,
        emb: ImageEmbedding,
        boxes: NDArray[np.float64],
        crop_box: list[int],
        original_hw: tuple[int, int],
        st: dict[str, Any],
        coverage: CoverageMap | None = None,
        thresholds: tuple[float | None, float | None] | None = None,
    ) -> list[Candidates]:
        """Box prompts ``(K, 4)`` XYXY (original pixels, whole-image crop) in decoder batches, token 0;
        accepted masks are added to ``coverage`` when given; ``thresholds`` as in :meth:`_batch`."""
        parts = []
        for s in range(0, boxes.shape[0], self.points_per_batch):
            chunk = boxes[s : s + self.points_per_batch]
            coords = transforms.apply_boxes(chunk, original_hw, emb.image_size).reshape(-1, 2, 2)
            labels = np.tile(np.asarray(BOX_LABELS, dtype=np.float32), (chunk.shape[0], 1))
            d = self._decode(coords, labels, emb, st, 1)
            if coverage is not None:
                self._accept(coverage, d)
            xy, index = np.full((chunk.shape[0], 2), np.nan), np.arange(s, s + chunk.shape[0])
            parts.append(self._batch(d, xy, index, crop_box, original_hw, emb, st, thresholds))
        return parts

    def _point_parts(
        self,
        emb: ImageEmbedding,
        points: NDArray[np.float64],
        idx: NDArray[np.int64],
        crop_box: list[int],
        original_hw: tuple[int, int],
        st: dict[str, Any],
        coverage: CoverageMap | None = None,
    ) -> list[Candidates]:
        """The grid points ``points[idx]`` (crop frame) as one-point prompts in decoder batches; masks
        accepted for coverage are added to ``coverage`` (after all batches: see the coverage docs)."""
        crop_h, crop_w = emb.original_hw
        offset = np.array(crop_box[:2], dtype=np.float64)
        parts, decoded = [], []
        for s in range(0, idx.size, self.points_per_batch):
            sel = idx[s : s + self.points_per_batch]
            pts = points[sel]
            n = pts.shape[0]
            # one positive point plus SAM's (0, 0) / -1 padding point per prompt
            coords = np.zeros((n, 2, 2), dtype=np.float32)
            coords[:, 0] = transforms.apply_coords(pts, (crop_h, crop_w), emb.image_size)
            labels = np.tile(np.array([1.0, -1.0], dtype=np.float32), (n, 1))
            d = self._decode(coords, labels, emb, st, self.multimask)
            if coverage is not None:
                decoded.append(self._accepted(d))
            parts.append(self._batch(d, pts + offset, sel, crop_box, original_hw, emb, st))
        if coverage is not None:
            for low in decoded:
                coverage.add(low)
        return parts

    def _accepted(self, d: Decoded) -> NDArray[np.float32]:
        """``(n, 256, 256)`` low-res logits of the masks of ``d`` accepted for coverage (a copy of
        those only)."""
        keep = accepted(
            d,
            self.quality_score,
            self.pred_iou_thresh,
            self.stability_score_thresh,
            self.coverage_stability_thresh,
        )
        return d.low_res_logits[keep]

    def _accept(self, coverage: CoverageMap, d: Decoded) -> None:
        coverage.add(self._accepted(d))

    def _remaining(self, st: dict[str, Any]) -> int | None:
        return None if self.max_prompts is None else max(0, self.max_prompts - int(st["prompts"]))

    def _nms_within(self, data: Candidates, st: dict[str, Any]) -> Candidates:
        if len(data):
            data = data.take(nms(data.boxes, data.scores(self.quality_score), self.box_nms_thresh))
        st["after_box_nms"] += len(data)
        return data


__all__ = ["DecodeStages"]
