"""Automatic mask generation ("everything mode") in numpy + onnxruntime, after SAM's generator.

:class:`AutomaticMaskGenerator` follows ``SamAutomaticMaskGenerator`` (same parameter names, defaults,
steps and record format) on any :class:`~edgesam_backend.runtime.base.BasePredictor`:

1. crop boxes: layer 0 is the whole image, layer ``i`` has ``(2**i)**2`` overlapping crops
   (:func:`~edgesam_backend.runtime.transforms.generate_crop_boxes`);
2. per crop: encode the cropped pixels once, lay a point grid over the crop
   (``points_per_side / crop_n_points_downscale_factor**i`` per side), decode the points in batches of
   ``points_per_batch`` — **one** batched decoder call per batch;
3. per batch: quality filter on the low-res outputs, upscale only the survivors (in memory-bounded
   chunks) to the crop, threshold at 0, tight boxes, drop masks near a crop edge that is not an image
   edge, compress to RLE (full-image frame);
4. box NMS per crop; NMS across crops preferring smaller crops; optional hole/island removal
   (``min_mask_region_area``) and a second NMS preferring unchanged masks;
5. records as SAM writes them.

Quality score. EdgeSAM did not distil SAM's IoU head, so its predicted IoU is not a usable quality
signal. By default (``quality_score="stability"``) masks are filtered on the stability score only
(``stability >= stability_score_thresh``) and NMS ranks by stability; ``pred_iou_thresh`` is then
**ignored**. With ``quality_score="iou"`` the generator behaves as SAM's: filter ``predicted_iou >
pred_iou_thresh`` and ``stability >= stability_score_thresh``, NMS ranks by predicted IoU. A threshold
of 0 disables its filter (SAM's rule). Which score was used is in ``last_stats["quality_score"]``.

Differences from SAM, all deliberate: stability scores are computed on the 256x256 low-res logits (the
decoder's own output at offset 1.0, recomputed here for another ``stability_score_offset``) so that
filtering happens before the costly upscaling; ties in NMS keep the earlier candidate (stable sort);
``multimask`` chooses 1/3/4 mask tokens per point (SAM's everything mode uses 3).

Record format (SAM's): ``segmentation`` (``(H, W)`` bool, SAM's uncompressed RLE, or a COCO RLE with a
``str`` ``counts``), ``area`` (pixels), ``bbox`` (XYWH computed SAM's way from inclusive max indices:
``[x_min, y_min, x_max - x_min, y_max - y_min]``; pycocotools' ``toBbox`` reports one pixel more),
``predicted_iou``, ``stability_score``, ``point_coords`` (``[[x, y]]`` original pixels), ``crop_box``
(XYWH). :meth:`AutomaticMaskGenerator.generate_from_boxes` records have ``point_coords == []`` and add
``box_prompt`` (XYXY), ``prompt_index`` and, with scores, ``proposal_score``.

Memory. Low-res logits of a batch stay in the decoder's output array; only masks that pass the quality
filter are upscaled, ``upscale_chunk_bytes`` (256 MB) worth at a time, kept as bool only long enough
for boxes and the crop-edge test, then compressed to pycocotools RLEs — every later stage (NMS, small
regions) works on boxes and RLEs, and binary masks are decoded once, for the final records only. The
decoder itself dominates memory: onnxruntime's arena grows by ~58 MB per prompt in a batch (~3.7 GB
at ``points_per_batch=64``, 2 threads) while the time per prompt measured no better at B=64 than at
B=8, so small CPU servers are better served by ``points_per_batch`` 8-16.

Counters and timings of the last call are in ``generator.last_stats`` (also returned with
``return_stats=True``): ``decoder_calls``, ``prompts``, ``encoder_calls``, candidate counts after each
stage, ``encoder_s``, ``decoder_s``, ``postprocess_s`` (everything else, incl. ``upscale_s``), ``total_s``.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import transforms
from .base import BOX_LABELS, ImageEmbedding
from .boxes import box_iou, nms
from .masks import (
    MASK_THRESHOLD,
    STABILITY_OFFSET,
    batched_mask_to_box,
    decode_rles,
    encode_rles,
    encode_rles_transposed,
    mask_to_uncompressed_rle,
    remove_small_regions,
    stability_score,
)
from .tokens import select_tokens

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
QUALITY_SCORES = ("stability", "iou")
#: Pixels within which a box counts as touching a crop edge (SAM's value).
CROP_EDGE_ATOL = 20.0


def _upscale_masks_t(
    low: NDArray[np.float32],
    rows: NDArray[np.int64],
    toks: NDArray[np.int64],
    emb: ImageEmbedding,
    original_hw: tuple[int, int],
    offset_xy: tuple[int, int],
) -> NDArray[np.bool_]:
    """``low[rows, toks]`` (``low``: ``(B, 4, 256, 256)``) → bool masks (``logits > 0``) pasted at
    ``offset_xy`` into the original frame and stored **transposed**, ``(n, W, H)``: pycocotools' Fortran
    layout, so RLE encoding needs no further copy (OpenCV's transpose of each thresholded mask is ~5x
    cheaper than numpy's transposing copy of a bool batch). Only the selected masks are touched.

    One :func:`transforms.upscale_logits` call per mask, so each mask is thresholded and transposed
    straight into its slot without a (n, H, W) float intermediate (``upscale_logits`` itself resizes
    in groups of at most 4 channels, OpenCV's SIMD path; more channels per call measured 10-30x
    slower).
    """
    h, w = emb.original_hw
    big_h, big_w = original_hw
    x0, y0 = offset_xy
    full = (h, w) == (big_h, big_w)
    out = (np.empty if full else np.zeros)((rows.size, big_w, big_h), dtype=bool)
    for j, (r, t) in enumerate(zip(rows.tolist(), toks.tolist(), strict=True)):
        logits = transforms.upscale_logits(low[r, t : t + 1], emb.input_hw, emb.original_hw)
        mask = np.greater(logits[0], MASK_THRESHOLD).view(np.uint8)
        if full:
            cv2.transpose(mask, dst=out[j].view(np.uint8))
        else:
            out[j, x0 : x0 + w, y0 : y0 + h] = cv2.transpose(mask).view(bool)
    return out


# --- candidate masks ---------------------------------------------------------------------------------


@dataclass
class _Candidates:
    """Masks kept so far (all in the original image frame)."""

    rles: list[dict] = field(default_factory=list)
    boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    iou: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    points: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    prompt_index: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    crop_boxes: NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, idx: NDArray[np.int64]) -> _Candidates:
        idx = np.asarray(idx, dtype=np.int64)
        return _Candidates(
            [self.rles[i] for i in idx],
            self.boxes[idx],
            self.iou[idx],
            self.stability[idx],
            self.points[idx],
            self.prompt_index[idx],
            self.crop_boxes[idx],
        )

    @staticmethod
    def concat(parts: list[_Candidates]) -> _Candidates:
        parts = [p for p in parts if len(p)]
        if not parts:
            return _Candidates()
        return _Candidates(
            [r for p in parts for r in p.rles],
            np.concatenate([p.boxes for p in parts]),
            np.concatenate([p.iou for p in parts]),
            np.concatenate([p.stability for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.prompt_index for p in parts]),
            np.concatenate([p.crop_boxes for p in parts]),
        )


# --- validation --------------------------------------------------------------------------------------


def _int_param(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_param(name: str, value: Any, lo: float, hi: float, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or v > hi or (hi_open and v == hi):
        interval = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return v


def _check_image(image: Any) -> NDArray[np.uint8]:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H, W, 3) uint8 RGB image or an ImageEmbedding, got "
            f"{getattr(image, 'shape', type(image).__name__)}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image is empty")
    return image


# --- the generator -----------------------------------------------------------------------------------


class AutomaticMaskGenerator:
    """Segment everything: SAM's automatic mask generator on an EdgeSAM predictor (see module docs).

    Args:
        predictor: a :class:`~edgesam_backend.runtime.base.BasePredictor` (``OnnxPredictor`` or
            ``TorchPredictor``); only ``encode`` and ``predict_low_res`` are used.
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
    """

    #: Memory budget (bytes) of one upscaling chunk: low-res survivors are upscaled this many at a time.
    upscale_chunk_bytes: int = 256 << 20

    def __init__(
        self,
        predictor: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[NDArray[np.float64]] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        quality_score: str = "stability",
        multimask: int = 3,
    ) -> None:
        if not (
            callable(getattr(predictor, "encode", None))
            and callable(getattr(predictor, "predict_low_res", None))
        ):
            raise TypeError(
                "predictor must be an EdgeSAM predictor with encode() and predict_low_res(), "
                f"got {type(predictor)!r}"
            )
        self.predictor = predictor
        self.points_per_batch = _int_param("points_per_batch", points_per_batch, 1)
        self.pred_iou_thresh = _float_param("pred_iou_thresh", pred_iou_thresh, 0.0, 1.0)
        self.stability_score_thresh = _float_param("stability_score_thresh", stability_score_thresh, 0.0, 1.0)
        self.stability_score_offset = _float_param(
            "stability_score_offset", stability_score_offset, 0.0, float("inf")
        )
        self.box_nms_thresh = _float_param("box_nms_thresh", box_nms_thresh, 0.0, 1.0)
        self.crop_n_layers = _int_param("crop_n_layers", crop_n_layers, 0)
        self.crop_nms_thresh = _float_param("crop_nms_thresh", crop_nms_thresh, 0.0, 1.0)
        self.crop_overlap_ratio = _float_param(
            "crop_overlap_ratio", crop_overlap_ratio, 0.0, 1.0, hi_open=True
        )
        self.crop_n_points_downscale_factor = _int_param(
            "crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1
        )
        self.min_mask_region_area = _int_param("min_mask_region_area", min_mask_region_area, 0)
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.output_mode = output_mode
        if quality_score not in QUALITY_SCORES:
            raise ValueError(f"quality_score must be one of {QUALITY_SCORES}, got {quality_score!r}")
        self.quality_score = quality_score
        try:
            self._tokens = select_tokens(multimask)
        except ValueError:
            raise ValueError(
                f"multimask (mask tokens per point) must be 1, 3 or 4, got {multimask!r}"
            ) from None
        self.multimask = int(multimask)

        if (points_per_side is None) == (point_grids is None):
            raise ValueError(
                "give exactly one of points_per_side or point_grids "
                "(pass points_per_side=None with point_grids)"
            )
        if points_per_side is not None:
            self.points_per_side: int | None = _int_param("points_per_side", points_per_side, 1)
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
            self.point_grids = self._check_point_grids(point_grids)
        self.last_stats: dict[str, Any] = {}

    def _check_point_grids(self, grids: Any) -> list[NDArray[np.float64]]:
        if isinstance(grids, np.ndarray) or not isinstance(grids, (list, tuple)):
            raise ValueError("point_grids must be a list with one (N, 2) array per crop layer")
        if len(grids) != self.crop_n_layers + 1:
            raise ValueError(
                f"point_grids needs one grid per crop layer ({self.crop_n_layers + 1} for "
                f"crop_n_layers={self.crop_n_layers}), got {len(grids)}"
            )
        out = []
        for i, g in enumerate(grids):
            a = np.asarray(g, dtype=np.float64)
            if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
                raise ValueError(f"point_grids[{i}] must have shape (N, 2) with N >= 1, got {a.shape}")
            if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
                raise ValueError(f"point_grids[{i}] must hold (x, y) normalised to [0, 1]")
            out.append(a)
        return out

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
        st = self._new_stats("grid")
        if isinstance(image, ImageEmbedding):
            if self.crop_n_layers > 0:
                raise ValueError("crop_n_layers > 0 needs the image pixels, not an ImageEmbedding")
            original_hw = tuple(int(v) for v in image.original_hw)
            crop_boxes, layers = [[0, 0, original_hw[1], original_hw[0]]], [0]
            pixels = None
        else:
            pixels = _check_image(image)
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
        data = _Candidates.concat(parts)
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
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        """Proposal-prompted mode: one mask per XYXY box ``(K, 4)`` (original pixels), box prompts in
        decoder batches of ``points_per_batch``, single-mask token (``num_multimask_outputs=1``), then
        the same quality filter, NMS, small-region removal and records as :meth:`generate` (at most K
        masks). ``scores`` (``(K,)``, e.g. proposal scores) are only carried into the records."""
        t0 = time.perf_counter()
        st = self._new_stats("boxes")
        b = np.asarray(boxes, dtype=np.float64)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must have shape (K, 4) as XYXY pixels, got {b.shape}")
        if not np.isfinite(b).all():
            raise ValueError("boxes must be finite")
        if (b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any():
            raise ValueError("boxes must be XYXY with x0 <= x1 and y0 <= y1")
        sc = None
        if scores is not None:
            sc = np.asarray(scores, dtype=np.float64).reshape(-1)
            if sc.shape[0] != b.shape[0]:
                raise ValueError(f"{b.shape[0]} boxes but {sc.shape[0]} scores")
        if isinstance(embedding_or_image, ImageEmbedding):
            emb = embedding_or_image
        else:
            emb = self._encode(_check_image(embedding_or_image), st)
        original_hw = tuple(int(v) for v in emb.original_hw)
        crop_box = [0, 0, original_hw[1], original_hw[0]]
        st["crops"] = 1
        parts = []
        for s in range(0, b.shape[0], self.points_per_batch):
            chunk = b[s : s + self.points_per_batch]
            coords = transforms.apply_boxes(chunk, original_hw).reshape(-1, 2, 2)
            labels = np.tile(np.asarray(BOX_LABELS, dtype=np.float32), (chunk.shape[0], 1))
            low, iou, stab = self._decode(coords, labels, emb, st)
            parts.append(
                self._process_batch(
                    low,
                    iou,
                    stab,
                    select_tokens(1),
                    np.full((chunk.shape[0], 2), np.nan),
                    np.arange(s, s + chunk.shape[0]),
                    crop_box,
                    original_hw,
                    emb,
                    st,
                )
            )
        data = self._nms_within(_Candidates.concat(parts), st)
        st["after_crop_nms"] = len(data)
        return self._finish(data, original_hw, st, t0, return_stats, box_prompts=b, box_scores=sc)

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
            emb = self.predictor.encode(_check_image(emb))
        encode_s = time.perf_counter() - t0
        if emb.proposals is None:
            raise ValueError(
                "this model has no region proposal head: export a checkpoint with rpn_head.* weights "
                "(edgesam train-rpn), or use generate() (point grid)"
            )
        props = emb.proposals.top(int(top_k), proposal_nms_thresh)
        records, st = self.generate_from_boxes(emb, props.boxes, props.scores, return_stats=True)
        st["encoder_calls"] += int(encoded)
        st["encoder_s"] += encode_s
        st["total_s"] = time.perf_counter() - t0  # wall time incl. encoding and proposal decoding
        self.last_stats = st
        return (records, st) if return_stats else records

    # --- stages --------------------------------------------------------------------------------------
    def _new_stats(self, mode: str) -> dict[str, Any]:
        return {
            "mode": mode,
            "quality_score": self.quality_score,
            "crops": 0,
            "encoder_calls": 0,
            "decoder_calls": 0,
            "prompts": 0,
            "candidates": 0,
            "after_quality_filter": 0,
            "after_edge_filter": 0,
            "after_box_nms": 0,
            "after_crop_nms": 0,
            "after_small_regions": 0,
            "masks": 0,
            "encoder_s": 0.0,
            "decoder_s": 0.0,
            "upscale_s": 0.0,
            "postprocess_s": 0.0,
            "total_s": 0.0,
        }

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
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        t = time.perf_counter()
        out = self.predictor.predict_low_res(coords, labels, None, emb)
        st["decoder_s"] += time.perf_counter() - t
        st["decoder_calls"] += 1
        st["prompts"] += int(coords.shape[0])
        return out

    def _process_crop(
        self,
        emb: ImageEmbedding,
        crop_box: list[int],
        layer: int,
        original_hw: tuple[int, int],
        st: dict[str, Any],
    ) -> _Candidates:
        crop_h, crop_w = emb.original_hw
        points = self.point_grids[layer] * np.array([crop_w, crop_h], dtype=np.float64)  # crop frame
        offset = np.array(crop_box[:2], dtype=np.float64)
        parts = []
        for s in range(0, points.shape[0], self.points_per_batch):
            pts = points[s : s + self.points_per_batch]
            n = pts.shape[0]
            # one positive point plus SAM's (0, 0) / -1 padding point per prompt
            coords = np.zeros((n, 2, 2), dtype=np.float32)
            coords[:, 0] = transforms.apply_coords(pts, (crop_h, crop_w))
            labels = np.tile(np.array([1.0, -1.0], dtype=np.float32), (n, 1))
            low, iou, stab = self._decode(coords, labels, emb, st)
            parts.append(
                self._process_batch(
                    low,
                    iou,
                    stab,
                    self._tokens,
                    pts + offset,
                    np.arange(s, s + n),
                    crop_box,
                    original_hw,
                    emb,
                    st,
                )
            )
        return self._nms_within(_Candidates.concat(parts), st)

    def _quality(self, data: _Candidates) -> NDArray[np.float32]:
        return data.stability if self.quality_score == "stability" else data.iou

    def _nms_within(self, data: _Candidates, st: dict[str, Any]) -> _Candidates:
        if len(data):
            data = data.take(nms(data.boxes, self._quality(data), self.box_nms_thresh))
        st["after_box_nms"] += len(data)
        return data

    def _chunk_size(self, crop_hw: tuple[int, int], original_hw: tuple[int, int]) -> int:
        # per mask: the full-frame transposed bool mask handed to pycocotools (+ a copy when the edge
        # filter drops some)
        per_mask = 2 * original_hw[0] * original_hw[1]
        return max(1, int(self.upscale_chunk_bytes // per_mask))

    def _process_batch(
        self,
        low: NDArray[np.float32],
        iou: NDArray[np.float32],
        stab: NDArray[np.float32],
        tokens: slice,
        prompt_xy: NDArray[np.float64],
        prompt_index: NDArray[np.int64],
        crop_box: list[int],
        original_hw: tuple[int, int],
        emb: ImageEmbedding,
        st: dict[str, Any],
    ) -> _Candidates:
        """One decoder batch ``(B, 4, 256, 256)`` → surviving masks as RLEs, all vectorised over masks.

        Candidates are numbered prompt-major (SAM's order): ``f = row * k + j`` for token ``tokens[j]``.
        """
        token_ids = np.arange(low.shape[1])[tokens]
        b, k = low.shape[0], token_ids.size
        iou = np.asarray(iou[:, tokens], dtype=np.float32).reshape(-1)
        if self.stability_score_offset != STABILITY_OFFSET:
            stab = stability_score(low[:, tokens], MASK_THRESHOLD, self.stability_score_offset).reshape(-1)
        else:
            stab = np.asarray(stab[:, tokens], dtype=np.float32).reshape(-1)
        source = np.repeat(np.arange(b), k)  # candidate -> prompt row
        token_of = np.tile(token_ids, b)  # candidate -> mask token
        keep = np.ones(b * k, dtype=bool)
        if self.quality_score == "iou" and self.pred_iou_thresh > 0.0:
            keep &= iou > self.pred_iou_thresh
        if self.stability_score_thresh > 0.0:
            keep &= stab >= self.stability_score_thresh
        idx = np.flatnonzero(keep)
        st["candidates"] += b * k
        st["after_quality_filter"] += int(idx.size)
        if not idx.size:
            return _Candidates()

        x0, y0 = int(crop_box[0]), int(crop_box[1])
        shift = np.array([x0, y0, x0, y0], dtype=np.int64)
        rles: list[dict] = []
        boxes, kept = [], []
        step = self._chunk_size(emb.original_hw, original_hw)
        for s in range(0, idx.size, step):
            sel = idx[s : s + step]
            t = time.perf_counter()
            masks_t = _upscale_masks_t(low, source[sel], token_of[sel], emb, original_hw, (x0, y0))
            st["upscale_s"] += time.perf_counter() - t
            crop_t = masks_t[:, x0 : x0 + emb.original_hw[1], y0 : y0 + emb.original_hw[0]]
            bx = batched_mask_to_box(crop_t)[:, [1, 0, 3, 2]] + shift  # transposed: rows are x
            ok = ~transforms.is_box_near_crop_edge(bx, crop_box, original_hw, CROP_EDGE_ATOL)
            if not ok.any():
                continue
            if not ok.all():
                masks_t = masks_t[ok]
            rles.extend(encode_rles_transposed(masks_t))
            boxes.append(bx[ok])
            kept.append(sel[ok])
        st["after_edge_filter"] += len(rles)
        if not rles:
            return _Candidates()
        kept_idx = np.concatenate(kept)
        n = kept_idx.size
        return _Candidates(
            rles,
            np.concatenate(boxes),
            iou[kept_idx],
            stab[kept_idx],
            np.asarray(prompt_xy, dtype=np.float64)[source[kept_idx]],
            np.asarray(prompt_index, dtype=np.int64)[source[kept_idx]],
            np.tile(np.asarray(crop_box, dtype=np.int64), (n, 1)),
        )

    def postprocess_small_regions(self, data: _Candidates, min_area: int, nms_thresh: float) -> _Candidates:
        """Fill holes and remove islands smaller than ``min_area`` in every mask, then NMS preferring
        masks that did not change (SAM's ``postprocess_small_regions``). Per mask: OpenCV connected
        components twice; changed masks are re-encoded."""
        if not len(data):
            return data
        from pycocotools import mask as mask_utils

        n = len(data)
        rles = list(data.rles)
        boxes = data.boxes.copy()
        unchanged = np.ones(n, dtype=np.float64)
        for i, rle in enumerate(data.rles):
            mask = mask_utils.decode(rle).astype(bool)
            mask, changed_holes = remove_small_regions(mask, min_area, "holes")
            mask, changed_islands = remove_small_regions(mask, min_area, "islands")
            if changed_holes or changed_islands:
                unchanged[i] = 0.0
                boxes[i] = batched_mask_to_box(mask)
                rles[i] = encode_rles(mask[None])[0]
        keep = nms(boxes, unchanged, nms_thresh)
        out = _Candidates(
            rles, boxes, data.iou, data.stability, data.points, data.prompt_index, data.crop_boxes
        )
        return out.take(keep)

    def _finish(
        self,
        data: _Candidates,
        original_hw: tuple[int, int],
        st: dict[str, Any],
        t0: float,
        return_stats: bool,
        box_prompts: NDArray[np.float64] | None = None,
        box_scores: NDArray[np.float64] | None = None,
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        st["after_small_regions"] = len(data)
        records = self._records(data, original_hw, box_prompts, box_scores)
        st["masks"] = len(records)
        st["total_s"] = time.perf_counter() - t0
        st["postprocess_s"] = st["total_s"] - st["encoder_s"] - st["decoder_s"]
        self.last_stats = st
        return (records, dict(st)) if return_stats else records

    def _records(
        self,
        data: _Candidates,
        original_hw: tuple[int, int],
        box_prompts: NDArray[np.float64] | None,
        box_scores: NDArray[np.float64] | None,
    ) -> list[dict[str, Any]]:
        if not len(data):
            return []
        from pycocotools import mask as mask_utils

        h, w = original_hw
        # pycocotools' area() builds a uint8 array of length N: under numpy 2 it overflows past 255 RLEs
        areas = np.concatenate([mask_utils.area(data.rles[s : s + 255]) for s in range(0, len(data), 255)])
        if self.output_mode == "binary_mask":
            binary = decode_rles(data.rles)
            segs: list[Any] = [binary[i] for i in range(len(data))]
        elif self.output_mode == "coco_rle":
            segs = [
                {
                    "size": [h, w],
                    "counts": r["counts"].decode("utf-8") if isinstance(r["counts"], bytes) else r["counts"],
                }
                for r in data.rles
            ]
        else:
            segs = [mask_to_uncompressed_rle(mask_utils.decode(r)) for r in data.rles]
        bboxes = transforms.box_xyxy_to_xywh(data.boxes).tolist()
        crops = transforms.box_xyxy_to_xywh(data.crop_boxes).tolist()
        records = []
        for i in range(len(data)):
            rec: dict[str, Any] = {
                "segmentation": segs[i],
                "area": int(areas[i]),
                "bbox": bboxes[i],
                "predicted_iou": float(data.iou[i]),
                "point_coords": [data.points[i].tolist()] if box_prompts is None else [],
                "stability_score": float(data.stability[i]),
                "crop_box": crops[i],
            }
            if box_prompts is not None:
                j = int(data.prompt_index[i])
                rec["box_prompt"] = box_prompts[j].tolist()
                rec["prompt_index"] = j
                if box_scores is not None:
                    rec["proposal_score"] = float(box_scores[j])
            records.append(rec)
        return records


__all__ = ["OUTPUT_MODES", "QUALITY_SCORES", "AutomaticMaskGenerator", "box_iou", "nms"]
