"""Agreement of an int8 or fp16 (or any other) model with fp32: best-mask IoU on a fixed prompt set, and its
record in the model's metadata."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..runtime.base import BasePredictor
from ..runtime.image import load_image
from ..runtime.masks import mask_iou
from .metadata import update_metadata

#: Mean best-mask IoU against fp32 at which int8 may be used by default.
AGREEMENT_THRESHOLD = 0.95


def default_prompts(h: int, w: int) -> list[dict[str, Any]]:
    """The fixed prompt set for an ``h x w`` image: a 3x3 grid of single positive points at 25/50/75 %
    of the width and height (3 multimask outputs), and two boxes (1 output)."""
    prompts: list[dict[str, Any]] = []
    for fy in (0.25, 0.5, 0.75):
        for fx in (0.25, 0.5, 0.75):
            prompts.append(
                {"point_coords": [[w * fx, h * fy]], "point_labels": [1], "box": None, "num_masks": 3}
            )
    for box in ((0.25, 0.25, 0.75, 0.75), (0.1, 0.2, 0.6, 0.9)):
        prompts.append(
            {
                "point_coords": None,
                "point_labels": None,
                "box": [w * box[0], h * box[1], w * box[2], h * box[3]],
                "num_masks": 1,
            }
        )
    return prompts


def _best_mask(predictor: BasePredictor, emb: Any, prompt: dict[str, Any]) -> NDArray[np.bool_]:
    pred = predictor.predict(
        prompt["point_coords"],
        prompt["point_labels"],
        prompt["box"],
        num_multimask_outputs=prompt["num_masks"],
        embedding=emb,
    )
    return pred.masks[pred.best("stability")]


def agreement(
    fp32_predictor: BasePredictor,
    int8_predictor: BasePredictor,
    images: Sequence[str | os.PathLike[str] | NDArray[np.uint8]],
    prompts_per_image: int | None = None,
) -> dict[str, Any]:
    """How closely ``int8_predictor`` follows ``fp32_predictor``.

    Each image is encoded by both; for every prompt of :func:`default_prompts` (the first
    ``prompts_per_image`` of them if given) the best mask by stability score is taken from each and
    their IoU computed (in the original image frame).

    Returns a JSON-ready dict: ``mean_iou``, ``min_iou`` (over all prompts), ``per_image`` (image →
    mean IoU), ``embedding_rel_error`` (``||e8 - e32|| / ||e32||``: ``mean`` and ``max`` over images),
    ``num_images``, ``num_prompts``, ``threshold`` and ``passes`` (``mean_iou >= threshold``).
    """
    if not images:
        raise ValueError("agreement needs at least one image")
    if prompts_per_image is not None and prompts_per_image < 1:
        raise ValueError(f"prompts_per_image must be >= 1, got {prompts_per_image}")
    ious: list[float] = []
    per_image: dict[str, float] = {}
    rel_errors: list[float] = []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            image, name = item, f"image{i}"
        else:
            image, name = load_image(item), Path(item).name
        if name in per_image:
            name = f"{name}#{i}"
        e32 = fp32_predictor.encode(image)
        e8 = e32 if int8_predictor is fp32_predictor else int8_predictor.encode(image)
        ref = float(np.linalg.norm(e32.embeddings))
        diff = float(np.linalg.norm(e8.embeddings.astype(np.float64) - e32.embeddings))
        rel_errors.append(diff / ref if ref > 0 else (0.0 if diff == 0 else float("inf")))
        prompts = default_prompts(*image.shape[:2])[:prompts_per_image]
        img_ious = [
            float(mask_iou(_best_mask(fp32_predictor, e32, p), _best_mask(int8_predictor, e8, p), empty=1.0))
            for p in prompts
        ]
        per_image[name] = float(np.mean(img_ious))
        ious.extend(img_ious)
    mean_iou = float(np.mean(ious))
    return {
        "mean_iou": mean_iou,
        "min_iou": float(np.min(ious)),
        "per_image": per_image,
        "embedding_rel_error": {"mean": float(np.mean(rel_errors)), "max": float(np.max(rel_errors))},
        "num_images": len(per_image),
        "num_prompts": len(ious),
        "threshold": AGREEMENT_THRESHOLD,
        "passes": mean_iou >= AGREEMENT_THRESHOLD,
    }


def split_held_out(images: Sequence[Path], fraction: float = 0.25) -> tuple[list[Path], list[Path]]:
    """``(calibration, held_out)``: every ``round(1 / fraction)``-th image (at least one) is held out for
    measuring agreement on images the int8 encoder was not calibrated on. With a single image there is
    nothing to hold out: both lists are that image (the caller reports it)."""
    imgs = list(images)
    if len(imgs) < 2:
        return imgs, imgs
    step = max(2, round(1 / fraction))
    held = imgs[step - 1 :: step] or imgs[-1:]
    calib = [p for p in imgs if p not in held]
    return calib, held


def record_agreement(path: str | os.PathLike[str], result: dict[str, Any], variant: str = "int8") -> None:
    """Store an :func:`agreement` summary in the model's metadata (``edgesam.<variant>.*``: ``int8``
    for the quantized encoder, ``fp16`` for the float16 files), atomically."""
    p = Path(path)
    values = {
        f"edgesam.{variant}.mean_iou": f"{result['mean_iou']:.6f}",
        f"edgesam.{variant}.min_iou": f"{result['min_iou']:.6f}",
        f"edgesam.{variant}.embedding_rel_error": f"{result['embedding_rel_error']['mean']:.6f}",
        f"edgesam.{variant}.agreement_images": str(result["num_images"]),
        f"edgesam.{variant}.agreement_held_out": str(bool(result.get("held_out", False))).lower(),
        f"edgesam.{variant}.passes": str(bool(result["passes"])).lower(),
    }
    update_metadata(p, values)
