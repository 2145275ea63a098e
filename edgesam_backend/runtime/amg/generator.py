"""The automatic mask generator: SAM's three entry points (point grid, box prompts, region proposals)
on an EdgeSAM predictor; see :mod:`edgesam_backend.runtime.amg` for the algorithm and record format."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import transforms
from ..base import ImageEmbedding
from ..boxes import nms
from ..decode import candidate_tokens
from ..quality import BOX_NMS_THRESH, PRED_IOU_THRESH, QUALITY_SCORES, STABILITY_SCORE_THRESH
from ..upscale import UPSCALE_CHUNK_BYTES
from .candidates import Candidates, remove_small_regions_nms
from .coverage import STRATEGIES, CoverageMap, grid_side, nested_levels, spread, uncovered
from .params import check_boxes, check_image, check_point_grids, float_param, int_param
from .records import OUTPUT_MODES, build_records
from .stages import DecodeStages
from .stats import close_stats, new_stats


class AutomaticMaskGenerator(DecodeStages):
    """Segment everything: SAM's automatic mask generator on an EdgeSAM predictor (see module docs).

    Args:
        predictor: a :class:`~edgesam_backend.runtime.base.BasePredictor` (``OnnxPredictor`` or
            ``TorchPredictor``); only ``encode`` and ``decode`` are used.
        points_per_side: grid points per image side (``points_per_side**2`` prompts on layer 0); ``None``
            when ``point_grids`` is given (exactly one of the two).
        points_per_batch: prompts per decoder call.
        pred_iou_thresh: keep masks with predicted IoU ``>`` this; **only with** ``quality_score="iou"``.
        stability_score_thresh: keep masks with stability ``>=`` this (0 disables).
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: box-IoU threshold of the NMS within a crop.
        crop_n_layers: extra crop layers (layer ``i`` has ``(2**i)**2`` crops).
        crop_nms_thresh: box-IoU threshold of the NMS across crops (smaller crops win).
        crop_overlap_ratio: overlap of layer-1 crops as a fraction of the short image side.
        crop_n_points_downscale_factor: points per side on layer ``i`` are divided by ``factor**i``.
        point_grids: explicit grids, one ``(N, 2)`` array in [0, 1] (x, y) per layer.
        min_mask_region_area: if > 0, fill holes and drop islands smaller than this (pixels), then NMS.
        output_mode: ``"binary_mask"``, ``"uncompressed_rle"`` or ``"coco_rle"``.
        quality_score: ``"stability"`` (default; EdgeSAM) or ``"iou"`` (SAM's behaviour).
        multimask: mask tokens per point: 3 (SAM's everything mode), 4 or 1.
        should_stop: called before every decoder batch; when it returns True the generation raises
            :class:`GenerationStopped` (a time budget or an abandoned request; nothing is returned).
        strategy: ``"grid"`` (SAM's: every grid point) or ``"coverage"`` (nested levels of the grid,
            each only where the accepted masks leave the crop uncovered; see
            :mod:`~edgesam_backend.runtime.amg.coverage`). Coverage needs ``points_per_side``.
        max_prompts: budget of decoder prompts per image (all crops, proposals included; ``None``: no
            budget). A level (or the grid) with more points than are left is thinned evenly.
        coverage_levels: nested levels of the coverage strategy (3: strides 4, 2, 1 of the grid).
        coverage_stability_thresh: a mask that passes the quality filter covers its area for later
            levels when its stability is at least this.
        proposal_top_k: with ``strategy="coverage"`` and an encoder with a region proposal head, the
            best ``proposal_top_k`` proposals (after NMS ``proposal_nms_thresh``) are decoded first as
            box prompts, then points only where they found nothing; 0 never uses proposals.
    """

    #: Memory budget (bytes) of one upscaling chunk: low-res survivors are upscaled this many at a time.
    upscale_chunk_bytes: int = UPSCALE_CHUNK_BYTES

    def __init__(
        self,
        predictor: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = PRED_IOU_THRESH,
        stability_score_thresh: float = STABILITY_SCORE_THRESH,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = BOX_NMS_THRESH,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = BOX_NMS_THRESH,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[NDArray[np.float64]] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        quality_score: str = "stability",
        multimask: int = 3,
        should_stop: Callable[[], bool] | None = None,
        strategy: str = "grid",
        max_prompts: int | None = None,
        coverage_levels: int = 3,
        coverage_stability_thresh: float = STABILITY_SCORE_THRESH,
        proposal_top_k: int = 100,
        proposal_nms_thresh: float = 0.7,
    ) -> None:
        if not (
            callable(getattr(predictor, "encode", None)) and callable(getattr(predictor, "decode", None))
        ):
            raise TypeError(
                f"predictor must be an EdgeSAM predictor with encode() and decode(), got {type(predictor)!r}"
            )
        self.predictor = predictor
        self.should_stop = should_stop
        self.points_per_batch = int_param("points_per_batch", points_per_batch, 1)
        self.pred_iou_thresh = float_param("pred_iou_thresh", pred_iou_thresh, 0.0, 1.0)
        self.stability_score_thresh = float_param("stability_score_thresh", stability_score_thresh, 0.0, 1.0)
        self.stability_score_offset = float_param(
            "stability_score_offset", stability_score_offset, 0.0, float("inf")
        )
        self.box_nms_thresh = float_param("box_nms_thresh", box_nms_thresh, 0.0, 1.0)
        self.crop_n_layers = int_param("crop_n_layers", crop_n_layers, 0)
        self.crop_nms_thresh = float_param("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0)
        self.crop_overlap_ratio = float_param(
            "crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, hi_open=True
        )
        self.crop_n_points_downscale_factor = int_param(
            "crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1
        )
        self.min_mask_region_area = int_param("min_mask_region_area", min_mask_region_area, 0)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.output_mode = output_mode
        if quality_score not in QUALITY_SCORES:
            raise ValueError(f"quality_score must be one of {QUALITY_SCORES}, got {quality_score!r}")
        self.quality_score = quality_score
        try:
            candidate_tokens("all", multimask)
        except ValueError:
            raise ValueError(
                f"multimask (mask tokens per point) must be 1, 3 or 4, got {multimask!r}"
            ) from None
        self.multimask = int(multimask)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.strategy = strategy
        self.max_prompts = None if max_prompts is None else int_param("max_prompts", max_prompts, 1)
        self.coverage_levels = int_param("coverage_levels", coverage_levels, 1)
        self.coverage_stability_thresh = float_param(
            "coverage_stability_thresh", coverage_stability_thresh, 0.0, 1.0
        )
        self.proposal_top_k = int_param("proposal_top_k", proposal_top_k, 0)
        self.proposal_nms_thresh = float_param("proposal_nms_thresh", proposal_nms_thresh, 0.0, 1.0)

        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side or point_grids "
                "(pass points_per_side=None with point_grids)"
            )
        if points_per_side is not None:
            self.points_per_side: int | None = int_param("points_per_side", points_per_side, 1)
            factor = self.crop_n_points_downscale_factor
            last = int(self.points_per_side / factor**self.crop_n_layers)
            if last < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} with crop_n_points_downscale_factor={factor} leaves "
                    f"no points on crop layer {self.crop_n_layers}"
                )
            self.point_grids = transforms.build_all_layer_point_grids(
                self.points_per_side, self.crop_n_layers, factor
            )
        else:
            self.points_per_side = None
            self.point_grids = check_point_grids(point_grids, self.crop_n_layers)
        if strategy == "coverage":
            for g in self.point_grids:
                grid_side(g)  # raises for a grid that is not square
        self.last_stats: dict[str, Any] = {}

    # --- public API ----------------------------------------------------------------------------------
    def generate(
        self, image: NDArray[np.uint8] | ImageEmbedding, return_stats: bool = False
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        """Masks for everything in ``image`` (``(H, W, 3)`` uint8 RGB).

        An :class:`ImageEmbedding` may be passed instead when ``crop_n_layers == 0`` (reuses a cached
        encoding). Returns SAM's records (see module docs), best first; with ``return_stats`` also the
        stats dict (the same as ``self.last_stats``).
        """
        t0 = time.perf_counter()
        st = new_stats(self.strategy, self.quality_score)
        if isinstance(image, ImageEmbedding):
            if self.crop_n_layers > 0:
                raise ValueError("crop_n_layers > 0 needs the image pixels, not an ImageEmbedding")
            original_hw = tuple(int(v) for v in image.original_hw)
            crop_boxes, layers = [[0, 0, original_hw[1], original_hw[0]]], [0]
            pixels = None
        else:
            pixels = check_image(image)
            original_hw = (int(pixels.shape[0]), int(pixels.shape[1]))
            crop_boxes, layers = transforms.generate_crop_boxes(
                original_hw, self.crop_n_layers, self.crop_overlap_ratio
            )
        st["crops"] = len(crop_boxes)
        parts = []
        for crop_box, layer in zip(crop_boxes, layers, strict=True):
            if pixels is None:
                assert isinstance(image, ImageEmbedding)
                emb = image
            else:
                x0, y0, x1, y1 = crop_box
                emb = self._encode(pixels[y0:y1, x0:x1], st)
            parts.append(self._process_crop(emb, crop_box, layer, original_hw, st))
        data = Candidates.concat(parts)
        if len(crop_boxes) > 1 and len(data):
            cb = data.crop_boxes.astype(np.float64)
            area = (cb[:, 2] - cb[:, 0]) * (cb[:, 3] - cb[:, 1])
            data = data.take(nms(data.boxes, 1.0 / area, self.crop_nms_thresh))
        st["after_crop_nms"] = len(data)
        return self._finish(data, original_hw, st, t0, return_stats)

    def generate_from_boxes(
        self,
        embedding_or_image: ImageEmbedding | NDArray[np.uint8],
        boxes: ArrayLike,
        scores: ArrayLike | None = None,
        return_stats: bool = False,
        *,
        filter: bool = False,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        """Boxes → masks: one mask per XYXY box ``(K, 4)`` (original pixels), in box order, box prompts in
        decoder batches of ``points_per_batch``, single-mask token (``num_multimask_outputs=1``).

        By default every box keeps its mask (K records; none dropped, even an empty one). ``filter=True``
        (the proposal-prompted everything mode, :meth:`generate_from_proposals`) applies
        :meth:`generate`'s quality filter, box NMS and small-region removal (at most K records).
        ``scores`` (``(K,)``, e.g. proposal scores) are only carried into the records."""
        t0 = time.perf_counter()
        st = new_stats("boxes", self.quality_score)
        b, sc = check_boxes(boxes, scores)
        if isinstance(embedding_or_image, ImageEmbedding):
            emb = embedding_or_image
        else:
            emb = self._encode(check_image(embedding_or_image), st)
        original_hw = tuple(int(v) for v in emb.original_hw)
        crop_box = [0, 0, original_hw[1], original_hw[0]]
        st["crops"] = 1
        thresholds = None if filter else (None, None)
        parts = self._box_parts(emb, b, crop_box, original_hw, st, thresholds=thresholds)
        data = Candidates.concat(parts)
        if filter:
            data = self._nms_within(data, st)
        st["after_crop_nms"] = len(data)
        return self._finish(
            data, original_hw, st, t0, return_stats, box_prompts=b, box_scores=sc, small_regions=filter
        )

    def generate_from_proposals(
        self,
        embedding_or_image: ImageEmbedding | NDArray[np.uint8],
        top_k: int = 100,
        proposal_nms_thresh: float = 0.7,
        return_stats: bool = False,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        """Proposal-prompted everything mode: the region proposal module's top-``top_k`` boxes after
        NMS (``proposal_nms_thresh``) as box prompts, see :meth:`generate_from_boxes`. Needs an encoder
        exported with the region proposal head (``ImageEmbedding.proposals``)."""
        emb = embedding_or_image
        t0 = time.perf_counter()
        encoded = not isinstance(emb, ImageEmbedding)
        if encoded:
            emb = self.predictor.encode(check_image(emb))
        encode_s = time.perf_counter() - t0
        if emb.proposals is None:
            raise ValueError(
                "this model has no region proposal head: export a checkpoint with rpn_head.* weights "
                "(edgesam train-rpn), or use generate() (point grid)"
            )
        props = emb.proposals.top(int(top_k), proposal_nms_thresh)
        records, st = self.generate_from_boxes(emb, props.boxes, props.scores, return_stats=True, filter=True)
        st["encoder_calls"] += int(encoded)
        st["encoder_s"] += encode_s
        st["total_s"] = time.perf_counter() - t0  # wall time incl. encoding and proposal decoding
        self.last_stats = st
        return (records, st) if return_stats else records

    # --- stages (the decoder stages are in DecodeStages) -------------------------------------------------
    def _process_crop(
        self,
        emb: ImageEmbedding,
        crop_box: list[int],
        layer: int,
        original_hw: tuple[int, int],
        st: dict[str, Any],
    ) -> Candidates:
        crop_h, crop_w = emb.original_hw
        points = self.point_grids[layer] * np.array([crop_w, crop_h], dtype=np.float64)  # crop frame
        if self.strategy == "grid":
            idx = np.arange(points.shape[0])
            left = self._remaining(st)
            if left is not None:
                idx = spread(idx, left)
            parts = self._point_parts(emb, points, idx, crop_box, original_hw, st)
            return self._nms_within(Candidates.concat(parts), st)
        coverage = CoverageMap((crop_h, crop_w))
        parts = []
        props = emb.proposals if layer == 0 else None
        if self.proposal_top_k > 0 and props is not None and len(props):
            top = props.top(self.proposal_top_k, self.proposal_nms_thresh)
            boxes = np.asarray(top.boxes, dtype=np.float64)
            left = self._remaining(st)
            if left is not None:
                boxes = boxes[:left]
            parts += self._box_parts(emb, boxes, crop_box, original_hw, st, coverage)
            st["proposal_prompts"] += int(boxes.shape[0])
        for level in nested_levels(grid_side(points), self.coverage_levels):
            idx = uncovered(points, level, coverage)
            left = self._remaining(st)
            if left is not None:
                idx = spread(idx, left)
            st["level_prompts"].append(int(idx.size))
            parts += self._point_parts(emb, points, idx, crop_box, original_hw, st, coverage)
        st["coverage"].append(round(coverage.fraction(), 4))
        return self._nms_within(Candidates.concat(parts), st)

    def postprocess_small_regions(self, data: Candidates, min_area: int, nms_thresh: float) -> Candidates:
        """Fill holes and remove islands smaller than ``min_area`` in every mask, then NMS preferring
        masks that did not change (SAM's ``postprocess_small_regions``)."""
        return remove_small_regions_nms(data, min_area, nms_thresh)

    def _finish(
        self,
        data: Candidates,
        original_hw: tuple[int, int],
        st: dict[str, Any],
        t0: float,
        return_stats: bool,
        box_prompts: NDArray[np.float64] | None = None,
        box_scores: NDArray[np.float64] | None = None,
        small_regions: bool = True,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        if small_regions and self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        st["after_small_regions"] = len(data)
        records = build_records(data, original_hw, self.output_mode, box_prompts, box_scores)
        close_stats(st, time.perf_counter() - t0, len(records))
        self.last_stats = st
        return (records, dict(st)) if return_stats else records


__all__ = ["AutomaticMaskGenerator"]
