"""Instance-mask datasets for ``edgesam finetune``: COCO instances and Label Studio JSON exports.

Both readers produce :class:`MaskRecord` lists (image file + COCO RLE per instance, original
frame); :class:`MaskDataset` turns one into a :class:`MaskSample`: the normalised, zero-padded
``(3, S, S)`` input and the masks in the same padded model frame (resized to the ``input_hw``
region with bilinear interpolation thresholded at 0.5, empty ones dropped), with their XYXY boxes
(pixel-corner convention: ``x1 = max column + 1``).

* COCO (:func:`read_coco_masks`): polygons, RLE, uncompressed RLE; crowd annotations skipped.
  Kept as one small function so a shared COCO reader can replace it.
* Label Studio (:func:`read_labelstudio_masks`): the project's JSON export (a list of tasks). The
  first annotation that is not cancelled counts; ``brushlabels`` results with ``format: rle`` are
  decoded with :mod:`..formats.labelstudio.rle`, ``polygonlabels`` (points in percent of the image) are
  rasterised with pycocotools. The image is ``data.image``'s file name looked up in the images
  folder (the ``?d=`` path of ``/data/local-files`` URLs, else the URL path's last part; an upload's
  ``<hash>-`` prefix is tried without it too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np
import torch
from numpy.typing import NDArray
from pycocotools import mask as mask_utils

from ..formats.coco import CocoFormatError, read_coco
from ..formats.coco import decode_segmentation as decode_mask
from ..formats.labelstudio.results import first_annotation, result_segmentation
from ..runtime import transforms
from ..runtime.image import load_image


@dataclass
class MaskRecord:
    """One image and its instance segmentations (COCO RLE / polygons, original frame)."""

    file: Path
    height: int
    width: int
    segmentations: list[Any] = field(default_factory=list)


@dataclass
class MaskSample:
    """One preprocessed image with its instance masks in the padded model frame."""

    image: torch.Tensor  # (3, S, S) float32, normalised, zero-padded
    masks: torch.Tensor  # (G, S, S) bool
    boxes: torch.Tensor  # (G, 4) float32 XYXY, model frame
    input_hw: tuple[int, int]


def read_coco_masks(images: Path, annotations: Path) -> list[MaskRecord]:
    """COCO instances json (read by :func:`~edgesam_backend.formats.coco.read_coco`) → records sorted
    by image id (crowd and segmentation-less annotations skipped)."""
    data = read_coco(annotations)
    recs: dict[Any, MaskRecord] = {}
    for im in sorted(data.images, key=lambda im: im.id):
        if im.height is None or im.width is None:
            raise CocoFormatError(f"{annotations}: image {im.id} has no width/height")
        recs[im.id] = MaskRecord(Path(images) / im.file_name, int(im.height), int(im.width))
    for a in data.annotations:
        rec = recs.get(a.image_id)
        if rec is not None and not a.iscrowd and a.segmentation:
            rec.segmentations.append(a.segmentation)
    return list(recs.values())


def _ls_file(images: Path, url: str) -> Path:
    parsed = urlparse(url)
    d = parse_qs(parsed.query).get("d")
    name = Path(unquote(d[0] if d else parsed.path)).name
    path = Path(images) / name
    if not path.is_file() and "-" in name:
        alt = Path(images) / name.split("-", 1)[1]
        if alt.is_file():
            return alt
    return path


def read_labelstudio_masks(images: Path, export: Path) -> list[MaskRecord]:
    """Label Studio JSON export → records in task order (tasks without masks kept, empty)."""
    tasks = json.loads(Path(export).read_text())
    if not isinstance(tasks, list):
        raise ValueError(f"{export}: a Label Studio JSON export is a list of tasks")
    recs = []
    for task in tasks:
        url = next(iter(task.get("data", {}).values()), None)
        if not isinstance(url, str):
            raise ValueError(f"{export}: task {task.get('id')} has no image URL in data")
        ann = first_annotation(task)
        segs, hw = [], (-1, -1)
        for res in (ann or {}).get("result", []):
            region = result_segmentation(res)
            if region is None:
                continue
            seg, h, w = region
            hw = (h, w)
            if isinstance(seg, np.ndarray):
                seg = mask_utils.encode(np.asfortranarray(seg.astype(np.uint8)))
            segs.append(seg)
        recs.append(MaskRecord(_ls_file(images, url), hw[0], hw[1], segs))
    return recs


def read_masks(fmt: str, images: Path, annotations: Path) -> list[MaskRecord]:
    """Records of ``fmt`` (``coco`` | ``labelstudio``)."""
    if fmt == "coco":
        return read_coco_masks(images, annotations)
    if fmt == "labelstudio":
        return read_labelstudio_masks(images, annotations)
    raise ValueError(f"unknown annotation format {fmt!r}")


def _to_model_frame(mask: NDArray[np.bool_], input_hw: tuple[int, int], size: int) -> NDArray[np.bool_]:
    h, w = input_hw
    m = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    out = np.zeros((size, size), bool)
    out[:h, :w] = m
    return out


class MaskDataset(torch.utils.data.Dataset):
    """Images + instance masks at ``image_size`` (see the module docstring)."""

    def __init__(self, records: list[MaskRecord], image_size: int) -> None:
        self.records = records
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> MaskSample:
        rec = self.records[i]
        img = load_image(rec.file)
        h, w = int(img.shape[0]), int(img.shape[1])
        if rec.height > 0 and (rec.height, rec.width) != (h, w):
            raise ValueError(f"{rec.file}: image is {h}x{w}, annotations say {rec.height}x{rec.width}")
        s = self.image_size
        resized = transforms.resize_longest_side(img, s)
        input_hw = (int(resized.shape[0]), int(resized.shape[1]))
        x = transforms.normalize_and_pad(resized, s)[0]
        masks = [_to_model_frame(decode_mask(seg, h, w), input_hw, s) for seg in rec.segmentations]
        masks = [m for m in masks if m.any()]
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return MaskSample(
            torch.from_numpy(x),
            torch.from_numpy(np.stack(masks) if masks else np.zeros((0, s, s), bool)),
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            input_hw,
        )
