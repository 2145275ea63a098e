"""Datasets for distillation and evaluation: SA-1B layout and COCO instances.

* **SA-1B**: ``<stem>.jpg`` with ``<stem>.json`` beside it (or in ``annotations``): ``{"image": {...},
  "annotations": [{"segmentation": {"size": [h, w], "counts": RLE}, "bbox": [x, y, w, h],
  "point_coords": [[x, y]], "area": ...}, ...]}``. Each mask gives a box and its SA-1B click.
* **COCO**: one instances json (polygons, RLE or uncompressed RLE); crowd annotations skipped; the
  point of a mask is drawn uniformly inside it (seeded by the annotation id) or is its centre (the
  point farthest from the boundary).

Images are resized so the long side is ``image_size`` (Pillow bilinear with antialias, SAM's rule),
normalised and zero-padded at the bottom/right (``runtime.transforms``); prompts are mapped with
``apply_boxes`` / ``apply_coords``. No augmentation unless ``hflip`` > 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..formats.coco import decode_segmentation
from ..formats.coco import read_coco as read_coco_file
from ..formats.imagefiles import is_image_file
from ..runtime import transforms
from ..runtime.image import load_image
from ..runtime.masks import center_point
from .distill_config import DataConfig


@dataclass
class Annotation:
    """One instance: XYXY box and (x, y) point in the original frame, area, and its RLE (or None)."""

    box: tuple[float, float, float, float]
    point: tuple[float, float] | None
    area: float
    segmentation: Any
    ann_id: int


@dataclass
class ImageRecord:
    """One image file and its instances (original frame)."""

    image_id: str
    file: Path
    height: int
    width: int
    annotations: list[Annotation] = field(default_factory=list)


def _read_file_list(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    return {line.strip() for line in Path(path).read_text().splitlines() if line.strip()}


def read_coco(cfg: DataConfig) -> list[ImageRecord]:
    """COCO instances json → image records sorted by image id (images without instances kept)."""
    if cfg.annotations is None:
        raise ValueError("data.annotations (the COCO instances json) is required for format: coco")
    data = read_coco_file(cfg.annotations)
    keep = _read_file_list(cfg.file_list)
    recs: dict[Any, ImageRecord] = {}
    for im in sorted(data.images, key=lambda im: im.id):
        if keep is not None and im.file_name not in keep:
            continue
        if im.height is None or im.width is None:
            raise ValueError(f"{cfg.annotations}: image {im.id} ({im.file_name}) has no width/height")
        recs[im.id] = ImageRecord(str(im.id), Path(cfg.images) / im.file_name, im.height, im.width)
    for a in data.annotations:
        rec = recs.get(a.image_id)
        if rec is None or (cfg.skip_crowd and a.iscrowd):
            continue
        if a.bbox is None:  # keypoint-only entries: nothing to distil
            continue
        if a.id is None:
            raise ValueError(f"{cfg.annotations}: annotation of image {a.image_id} has no id")
        x, y, w, h = a.bbox
        area = a.area if a.area is not None else w * h
        if w <= 0 or h <= 0 or area < cfg.min_mask_area:
            continue
        rec.annotations.append(Annotation((x, y, x + w, y + h), None, area, a.segmentation, a.id))
    out = list(recs.values())
    return out[: cfg.max_images] if cfg.max_images else out


def read_sa1b(cfg: DataConfig) -> list[ImageRecord]:
    """SA-1B folder → image records sorted by file name (annotations are read lazily)."""
    folder = Path(cfg.images)
    keep = _read_file_list(cfg.file_list)
    files = sorted(p for p in folder.iterdir() if is_image_file(p) and (keep is None or p.name in keep))
    if cfg.max_images:
        files = files[: cfg.max_images]
    ann_dir = Path(cfg.annotations) if cfg.annotations is not None else folder
    recs = []
    for f in files:
        js = ann_dir / (f.stem + ".json")
        if not js.is_file():
            raise FileNotFoundError(f"SA-1B annotation {js} for {f.name} not found")
        recs.append(ImageRecord(f.stem, f, -1, -1))
    return recs


def load_sa1b_annotations(rec: ImageRecord, ann_dir: Path, min_area: int = 1) -> None:
    """Fill ``rec`` (size and instances) from its SA-1B json, in place."""
    data = json.loads((ann_dir / (rec.file.stem + ".json")).read_text())
    info = data.get("image", {})
    anns = []
    for i, a in enumerate(data.get("annotations", [])):
        x, y, w, h = (float(v) for v in a["bbox"])
        area = float(a.get("area", w * h))
        if w <= 0 or h <= 0 or area < min_area:
            continue
        pc = a.get("point_coords")
        point = (float(pc[0][0]), float(pc[0][1])) if pc else None
        anns.append(Annotation((x, y, x + w, y + h), point, area, a["segmentation"], int(a.get("id", i))))
    seg_hw = anns[0].segmentation.get("size") if anns and isinstance(anns[0].segmentation, dict) else None
    rec.height = int(info.get("height", seg_hw[0] if seg_hw else -1))
    rec.width = int(info.get("width", seg_hw[1] if seg_hw else -1))
    rec.annotations = anns


def read_records(cfg: DataConfig) -> list[ImageRecord]:
    return read_coco(cfg) if cfg.format == "coco" else read_sa1b(cfg)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Item:
    """One preprocessed image with its prompts in the model frame."""

    index: int
    image_id: str
    image: torch.Tensor  # (3, S, S) normalised, zero-padded
    input_hw: tuple[int, int]
    original_hw: tuple[int, int]
    boxes: torch.Tensor  # (G, 4) XYXY model frame
    points: torch.Tensor  # (G, 2) (x, y) model frame
    areas: torch.Tensor  # (G,) original-frame areas
    sha256: str
    flipped: bool = False


class DistillDataset(torch.utils.data.Dataset):
    """Images + boxes + points for distillation (``need_prompts``) or embedding caching."""

    def __init__(self, cfg: DataConfig, image_size: int, *, seed: int = 0, hflip: float = 0.0) -> None:
        self.cfg = cfg
        self.image_size = image_size
        self.seed = seed
        self.hflip = hflip
        self.epoch = 0
        self.records = read_records(cfg)
        self.ann_dir = Path(cfg.annotations) if cfg.format == "sa1b" and cfg.annotations else Path(cfg.images)
        if not self.records:
            raise ValueError(f"no images found for {cfg.format} data at {cfg.images}")

    def __len__(self) -> int:
        return len(self.records)

    def record(self, i: int) -> ImageRecord:
        rec = self.records[i]
        if self.cfg.format == "sa1b" and rec.height < 0:
            load_sa1b_annotations(rec, self.ann_dir, self.cfg.min_mask_area)
        return rec

    def _point(self, ann: Annotation, h: int, w: int) -> tuple[float, float]:
        if ann.point is not None:
            return ann.point
        m = decode_segmentation(ann.segmentation, h, w)
        if self.cfg.coco_point == "center":
            return center_point(m)
        ys, xs = np.nonzero(m)
        if len(xs) == 0:  # empty mask: box centre
            x0, y0, x1, y1 = ann.box
            return ((x0 + x1) / 2, (y0 + y1) / 2)
        j = int(np.random.default_rng([self.seed, ann.ann_id]).integers(len(xs)))
        ann.point = (float(xs[j]), float(ys[j]))  # memoised: the same point every epoch
        return ann.point

    def load_image(self, i: int) -> tuple[np.ndarray, str]:
        data = self.records[i].file.read_bytes()
        return load_image(data), sha256_bytes(data)

    def __getitem__(self, i: int) -> Item:
        rec = self.record(i)
        img, digest = self.load_image(i)
        hw = (int(img.shape[0]), int(img.shape[1]))
        if rec.height > 0 and (rec.height, rec.width) != hw:
            raise ValueError(
                f"{rec.file}: image is {hw[0]}x{hw[1]}, annotations say {rec.height}x{rec.width}"
            )
        s = self.image_size
        resized = transforms.resize_longest_side(img, s)
        ih, iw = resized.shape[:2]
        boxes = np.asarray([a.box for a in rec.annotations], np.float64).reshape(-1, 4)
        points = np.asarray([self._point(a, *hw) for a in rec.annotations], np.float64).reshape(-1, 2)
        boxes = transforms.apply_boxes(boxes, hw, s).reshape(-1, 4)
        points = transforms.apply_coords(points, hw, s).reshape(-1, 2)
        flipped = False
        if self.hflip > 0:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            if rng.random() < self.hflip:
                flipped = True
                resized = np.ascontiguousarray(resized[:, ::-1])
                boxes = np.stack([iw - boxes[:, 2], boxes[:, 1], iw - boxes[:, 0], boxes[:, 3]], axis=1)
                points = np.stack([iw - 1 - points[:, 0], points[:, 1]], axis=1)
        x = transforms.normalize_and_pad(resized, s)[0]
        areas = np.asarray([a.area for a in rec.annotations], np.float32)
        return Item(
            i,
            rec.image_id,
            torch.from_numpy(x),
            (ih, iw),
            hw,
            torch.from_numpy(boxes.astype(np.float32)),
            torch.from_numpy(points.astype(np.float32)),
            torch.from_numpy(areas),
            digest,
            flipped,
        )


def collate(items: list[Item]) -> list[Item]:
    return items


class EpochSampler(torch.utils.data.Sampler[int]):
    """Distributed, resumable index order: a seeded permutation per epoch (or epoch 0's order every
    epoch), padded to a multiple of the world size and sliced ``rank::world`` (DistributedSampler's
    rule); ``skip`` drops the first indices (resume inside an epoch)."""

    def __init__(
        self,
        n: int,
        world: int = 1,
        rank: int = 0,
        *,
        seed: int = 0,
        shuffle: bool = True,
        same_order: bool = True,
    ) -> None:
        self.n, self.world, self.rank = n, world, rank
        self.seed, self.shuffle, self.same_order = seed, shuffle, same_order
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + (0 if self.same_order else self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = -(-self.n // self.world) * self.world
        order = (order * (-(-total // max(1, len(order)))))[:total]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.skip)
