"""What a fit learns from and is judged on: a project's submitted masks, written as a training set.

:func:`annotated_tasks` keeps the tasks whose first non-cancelled annotation has brush/polygon masks
(:mod:`..formats.labelstudio.results`); :func:`split` holds out every fifth of them (by task id, at
least one) when there are five or more, else validates on the training tasks and says so;
:func:`write_set` downloads each image once through the backend's fetcher (same hosts, credentials
and EXIF handling as ``/predict``), stores it as ``<task id>.png`` (displayed orientation: the frame
Label Studio's percentages refer to) and writes a Label Studio JSON export of those tasks that
``edgesam finetune`` reads with ``format: labelstudio``. :func:`held_out_miou` scores a predictor on
the held-out masks (box prompt, token 0; one centre point, best of three by stability), torch-free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..fileio import atomic_write_text
from ..formats.labelstudio.results import MASK_TYPES, first_annotation, task_masks
from ..runtime.base import BasePredictor
from ..runtime.masks import center_point, mask_iou
from .images import ImageFetcher, decode_image


@dataclass
class FitSet:
    """A written training or held-out set: its images folder, its export file and what it holds."""

    images: Path
    export: Path
    tasks: int
    masks: int


def has_masks(task: dict[str, Any]) -> bool:
    """Whether the task's first non-cancelled annotation carries a brush or polygon result."""
    ann = first_annotation(task)
    return any(isinstance(r, dict) and r.get("type") in MASK_TYPES for r in (ann or {}).get("result") or [])


def annotated_tasks(tasks: list[dict[str, Any]], image_key: str) -> list[dict[str, Any]]:
    """Tasks with an image URL under ``data[image_key]`` and masks to learn from, by task id."""
    keep = [t for t in tasks if isinstance((t.get("data") or {}).get(image_key), str) and has_masks(t)]
    return sorted(keep, key=lambda t: int(t.get("id", 0)))


def split(tasks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """``(train, held_out, held_out_is_separate)``: every fifth task held out when there are ≥ 5."""
    if len(tasks) < 5:
        return tasks, tasks, False
    held = [t for i, t in enumerate(tasks) if i % 5 == 4]
    return [t for i, t in enumerate(tasks) if i % 5 != 4], held, True


def write_set(
    tasks: list[dict[str, Any]], image_key: str, fetcher: ImageFetcher, out: Path, max_pixels: int
) -> FitSet:
    """Images (``out/images/<id>.png``) + ``out/export.json`` for ``tasks`` (see the module docstring)."""
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    export, n_masks = [], 0
    for t in tasks:
        tid = int(t["id"])
        name = f"{tid}.png"
        if not (images / name).is_file():
            rgb = decode_image(fetcher.fetch(t["data"][image_key], tid), max_pixels)
            ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"task {tid}: could not write its image as PNG")
            tmp = images / f".{name}.tmp"
            tmp.write_bytes(png.tobytes())
            tmp.replace(images / name)
        ann = first_annotation(t)
        n_masks += len(task_masks(t))
        export.append({"id": tid, "data": {image_key: name}, "annotations": [ann]})
    path = out / "export.json"
    atomic_write_text(path, json.dumps(export))
    return FitSet(images, path, len(tasks), n_masks)


def held_out_miou(predictor: BasePredictor, held: FitSet, max_images: int = 50) -> dict[str, Any]:
    """mIoU ×100 of ``predictor`` on the held-out masks: ``box`` (tight box, token 0) and ``point``
    (the mask's distance-transform centre, best of 3 by stability), original image frame."""
    from ..runtime.image import load_image

    tasks = json.loads(held.export.read_text())[:max_images]
    box_ious: list[float] = []
    point_ious: list[float] = []
    for t in tasks:
        masks = task_masks(t)
        if not masks:
            continue
        image = load_image(held.images / t["data"][next(iter(t["data"]))])
        emb = predictor.encode(image)
        for gt in masks:
            ys, xs = np.nonzero(gt)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
            pred = predictor.predict_selected(None, None, box, select="single", embedding=emb)
            box_ious.append(float(mask_iou(pred.masks[0], gt)))
            pt = np.array([center_point(gt)], np.float64)
            pred = predictor.predict_selected(
                pt, np.ones(1, np.int64), None, select="stability", num_multimask_outputs=3, embedding=emb
            )
            point_ious.append(float(mask_iou(pred.masks[0], gt)))
    return {
        "instances": len(box_ious),
        "miou_box": round(100 * float(np.mean(box_ious)), 2) if box_ious else None,
        "miou_point": round(100 * float(np.mean(point_ious)), 2) if point_ious else None,
    }
