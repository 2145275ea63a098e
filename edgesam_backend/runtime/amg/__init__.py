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
   with ``strategy="coverage"`` the grid is decoded in nested levels (every 4th, 2nd, then every point),
   each level only where the masks accepted so far (quality filter + ``coverage_stability_thresh``)
   leave the crop uncovered, region proposals first when the encoder has the head; ``max_prompts``
   caps the prompts per image (:mod:`~edgesam_backend.runtime.amg.coverage`);
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
decoder itself dominates memory: onnxruntime's arena grows by ~58 MB per prompt of the largest batch
run (~3.9 GB at 64), so the predictor splits every ``decode`` call into runs of at most
``predictor.max_decode_batch`` prompts (``OnnxPredictor`` on the CPU: 8, ~0.6 GB), whatever
``points_per_batch`` is.

Counters and timings of the last call are in ``generator.last_stats`` (also returned with
``return_stats=True``): ``decoder_calls``, ``prompts``, ``encoder_calls``, candidate counts after each
stage, ``encoder_s``, ``decoder_s``, ``postprocess_s`` (everything else, incl. ``upscale_s``), ``total_s``.
"""

from ..quality import QUALITY_SCORES
from .generator import AutomaticMaskGenerator
from .records import OUTPUT_MODES
from .stages import GenerationStopped

__all__ = ["OUTPUT_MODES", "QUALITY_SCORES", "AutomaticMaskGenerator", "GenerationStopped"]
