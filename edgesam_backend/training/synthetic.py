"""Synthetic detection/segmentation data with known objects, written as COCO (boxes + RLE masks).

Each image has a cluttered background (gradients, noise, thin lines and small specks that are *not*
objects) and 2-8 objects of varied shape (rotated rectangles, ellipses, triangles, regular polygons,
stars), colour, texture (solid, stripes, checker, noise) and size, drawn with occlusion: each
annotation is the object's *visible* mask and its box. Objects occluded below 40% visibility are
dropped. Deterministic for a seed. numpy + OpenCV + pycocotools only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from pycocotools import mask as mask_utils

from ..fileio import atomic_write_text

SHAPES = ("rectangle", "ellipse", "triangle", "polygon", "star")
TEXTURES = ("solid", "stripes", "checker", "noise")


@dataclass
class SyntheticImage:
    """One image ``(H, W, 3)`` uint8 RGB with visible instance masks ``(N, H, W)`` bool and XYXY boxes."""

    image: NDArray[np.uint8]
    masks: NDArray[np.bool_]
    boxes: NDArray[np.float32]
    shapes: list[str]


def _background(rng: np.random.Generator, h: int, w: int) -> NDArray[np.uint8]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ang = rng.uniform(0, np.pi)
    t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h + 1) / 2
    img = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img += rng.normal(0, rng.uniform(5, 25), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(3, 12)):  # thin clutter lines
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 3)))
    for _ in range(rng.integers(5, 25)):  # small specks
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, c, int(rng.integers(1, 3)), tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
    return img


def _shape_mask(rng: np.random.Generator, h: int, w: int, kind: str) -> NDArray[np.uint8]:
    m = np.zeros((h, w), np.uint8)
    size = rng.uniform(0.08, 0.55) * min(h, w)
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    ang = rng.uniform(0, 360)
    if kind == "rectangle":
        rect = ((cx, cy), (size, size * rng.uniform(0.3, 1.0)), ang)
        cv2.fillPoly(m, [cv2.boxPoints(rect).astype(np.int32)], 1)
    elif kind == "ellipse":
        axes = (max(2, int(size / 2)), max(2, int(size / 2 * rng.uniform(0.3, 1.0))))
        cv2.ellipse(m, (int(cx), int(cy)), axes, ang, 0, 360, 1, -1)
    else:
        n = {"triangle": 3, "polygon": int(rng.integers(5, 9)), "star": int(rng.integers(5, 8)) * 2}[kind]
        theta = np.deg2rad(ang) + np.arange(n) * 2 * np.pi / n
        r = np.full(n, size / 2)
        if kind == "star":
            r[1::2] *= rng.uniform(0.35, 0.6)
        pts = np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)
        cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    return m


def _texture(rng: np.random.Generator, h: int, w: int, kind: str) -> NDArray[np.uint8]:
    c0 = rng.uniform(0, 255, 3)
    if kind == "noise":
        return np.clip(c0 + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    if kind == "solid":
        tex = np.broadcast_to(c0, (h, w, 3)).astype(np.float32)
    else:
        c1 = rng.uniform(0, 255, 3)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(4, 16)
        if kind == "stripes":
            a = rng.uniform(0, np.pi)
            sel = np.sin((np.cos(a) * xx + np.sin(a) * yy) * 2 * np.pi / period) > 0
        else:  # checker
            sel = ((xx // period) + (yy // period)) % 2 == 0
        tex = np.where(sel[..., None], c0, c1).astype(np.float32)
    return np.clip(tex + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def make_image(rng: np.random.Generator, h: int = 256, w: int = 256, max_objects: int = 8) -> SyntheticImage:
    """Draw one image; objects later in the list occlude earlier ones."""
    img = _background(rng, h, w)
    full_masks, kinds = [], []
    for _ in range(int(rng.integers(2, max_objects + 1))):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        m = _shape_mask(rng, h, w, kind)
        if m.sum() < 30:
            continue
        tex = _texture(rng, h, w, TEXTURES[int(rng.integers(len(TEXTURES)))])
        img[m > 0] = tex[m > 0]
        full_masks.append(m.astype(bool))
        kinds.append(kind)
    masks, boxes, shapes = [], [], []
    covered = np.zeros((h, w), bool)
    for m, kind in zip(reversed(full_masks), reversed(kinds), strict=True):  # top-most first
        visible = m & ~covered
        covered |= m
        if visible.sum() < 0.4 * m.sum() or visible.sum() < 20:
            continue
        ys, xs = np.nonzero(visible)
        masks.append(visible)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        shapes.append(kind)
    masks_arr = np.stack(masks) if masks else np.zeros((0, h, w), bool)
    return SyntheticImage(img, masks_arr, np.asarray(boxes, np.float32).reshape(-1, 4), shapes)


def write_coco_dataset(
    out_dir: str | os.PathLike[str],
    num_images: int,
    *,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    max_objects: int = 8,
) -> Path:
    """Write ``out_dir/images/*.png`` and ``out_dir/annotations.json`` (COCO instances, RLE masks).

    Returns the annotation file path. Sizes may be ``(h, w)``; a single int gives square images.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(num_images):
        s = make_image(rng, h, w, max_objects)
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / "images" / name), cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for m, b, kind in zip(s.masks, s.boxes, s.shapes, strict=True):
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = (float(v) for v in b)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(m.sum()),
                    "segmentation": rle,
                    "attributes": {"shape": kind},
                }
            )
    coco = {
        "info": {"description": f"edgesam-backend synthetic shapes, seed {seed}"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    path = out / "annotations.json"
    atomic_write_text(path, json.dumps(coco))
    return path
