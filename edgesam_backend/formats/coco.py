"""COCO instances files: one reader (json → validated records) and the segmentation ↔ RLE helpers.

Frames: ``bbox`` is COCO's XYWH in original-image pixels of the corner frame (pixel ``(c, r)`` covers
``[c, c+1) x [r, r+1)``); segmentations are polygons (lists of flat ``x0 y0 x1 y1 ...`` in that frame),
compressed RLE (``counts`` a string/bytes) or uncompressed RLE (``counts`` a list), all column-major
as pycocotools defines them; keypoints are flat ``x y v`` triples (``v > 0``: labelled).

:func:`read_coco` checks the structure (types, lengths, finite numbers, unique image ids) and
nothing else (an annotation of an image that is not listed is kept; :meth:`CocoDataset.by_image`
simply never reaches it): which annotations a caller keeps (crowd, tiny boxes) is the caller's
choice. Errors are :class:`CocoFormatError` (a ``ValueError``) naming the offending entry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pycocotools import mask as mask_utils


class CocoFormatError(ValueError):
    """The file is not a COCO instances file, or one of its entries is malformed."""


ImageId = int | str


@dataclass(frozen=True)
class CocoImage:
    """One ``images[]`` entry; ``width``/``height`` are ``None`` when the file leaves them out."""

    id: ImageId
    file_name: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class CocoAnnotation:
    """One ``annotations[]`` entry. ``bbox`` XYWH (``None`` when absent); ``segmentation`` as in the
    file (polygons / RLE dict / ``None``); ``keypoints`` flat ``x y v`` triples."""

    id: int | None
    image_id: ImageId
    category_id: int | None
    bbox: tuple[float, float, float, float] | None
    area: float | None
    iscrowd: bool
    segmentation: Any
    keypoints: tuple[float, ...] = ()
    score: float | None = None

    def box_xyxy(self) -> tuple[float, float, float, float] | None:
        """``bbox`` as XYXY (``x1 = x + w``, ``y1 = y + h``), same frame."""
        if self.bbox is None:
            return None
        x, y, w, h = self.bbox
        return (x, y, x + w, y + h)

    def visible_points(self) -> list[list[float]]:
        """``[[x, y], ...]`` of the keypoints with ``v > 0``."""
        k = self.keypoints
        return [[k[j], k[j + 1]] for j in range(0, len(k) - 2, 3) if k[j + 2] > 0]


@dataclass
class CocoDataset:
    """Images in file order, category names by id, annotations in file order."""

    images: list[CocoImage]
    categories: dict[int, str]
    annotations: list[CocoAnnotation] = field(default_factory=list)

    def by_image(self) -> dict[ImageId, list[CocoAnnotation]]:
        """Annotations grouped by ``image_id`` (file order within each image)."""
        out: dict[ImageId, list[CocoAnnotation]] = {}
        for a in self.annotations:
            out.setdefault(a.image_id, []).append(a)
        return out


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise CocoFormatError(f"{where} must be a finite number, got {v!r}")
    return float(v)


def _int(v: Any, where: str) -> int:
    x = _number(v, where)
    if x != int(x):
        raise CocoFormatError(f"{where} must be an integer, got {v!r}")
    return int(x)


def _image_id(v: Any, where: str) -> ImageId:
    if isinstance(v, str) and v:
        return v
    return _int(v, where)


def _optional_size(v: Any, where: str) -> int | None:
    if v is None:
        return None
    n = _int(v, where)
    if n < 1:
        raise CocoFormatError(f"{where} must be >= 1, got {v!r}")
    return n


def _image(im: Any, i: int) -> CocoImage:
    where = f"images[{i}]"
    if not isinstance(im, dict):
        raise CocoFormatError(f"{where} must be an object")
    fn = im.get("file_name")
    if not isinstance(fn, str) or not fn:
        raise CocoFormatError(f"{where}.file_name must be a non-empty string")
    return CocoImage(
        id=_image_id(im.get("id"), f"{where}.id"),
        file_name=fn,
        width=_optional_size(im.get("width"), f"{where}.width"),
        height=_optional_size(im.get("height"), f"{where}.height"),
    )


def _annotation(a: Any, i: int) -> CocoAnnotation:
    where = f"annotations[{i}]"
    if not isinstance(a, dict):
        raise CocoFormatError(f"{where} must be an object")
    image_id = _image_id(a.get("image_id"), f"{where}.image_id")
    bbox = a.get("bbox")
    box = None
    if bbox is not None and bbox != []:
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            raise CocoFormatError(f"{where}.bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_number(v, f"{where}.bbox") for v in bbox)
        box = (x, y, w, h)
    kp = a.get("keypoints") or []
    if not isinstance(kp, list) or len(kp) % 3:
        raise CocoFormatError(f"{where}.keypoints must be a flat list of x, y, v triples")
    seg = a.get("segmentation")
    if seg is not None and not isinstance(seg, list | dict):
        raise CocoFormatError(f"{where}.segmentation must be polygons or an RLE object")
    return CocoAnnotation(
        id=None if a.get("id") is None else _int(a["id"], f"{where}.id"),
        image_id=image_id,
        category_id=None if a.get("category_id") is None else _int(a["category_id"], f"{where}.category_id"),
        bbox=box,
        area=None if a.get("area") is None else _number(a["area"], f"{where}.area"),
        iscrowd=bool(a.get("iscrowd", 0)),
        segmentation=seg,
        keypoints=tuple(_number(v, f"{where}.keypoints") for v in kp),
        score=None if a.get("score") is None else _number(a["score"], f"{where}.score"),
    )


def parse_coco(data: Any, what: str = "COCO file") -> CocoDataset:
    """A loaded COCO instances document → :class:`CocoDataset` (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFormatError(f"{what} is not a COCO file (no 'images' list)")
    try:
        images = [_image(im, i) for i, im in enumerate(data["images"])]
        if len({im.id for im in images}) != len(images):
            raise CocoFormatError("two images share an id")
        cats: dict[int, str] = {}
        for i, c in enumerate(data.get("categories") or []):
            if not isinstance(c, dict):
                raise CocoFormatError(f"categories[{i}] must be an object")
            cid = _int(c.get("id"), f"categories[{i}].id")
            cats[cid] = str(c.get("name", cid))
        anns = data.get("annotations") or []
        if not isinstance(anns, list):
            raise CocoFormatError("'annotations' must be a list")
        return CocoDataset(images, cats, [_annotation(a, i) for i, a in enumerate(anns)])
    except CocoFormatError as exc:
        raise CocoFormatError(f"{what}: {exc}") from None


def read_coco(path: str | Path) -> CocoDataset:
    """Read and validate a COCO instances json; :class:`CocoFormatError` names what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CocoFormatError(f"cannot read COCO file {path}: {exc}") from None
    return parse_coco(data, str(path))


# --- segmentations ---------------------------------------------------------------------------------


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, compressed or uncompressed RLE → one compressed RLE (pycocotools' form, ``counts``
    bytes) of the ``height`` x ``width`` image; several polygons are merged (union)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        return mask_utils.frPyObjects(seg, height, width)
    if isinstance(seg, dict):
        counts = seg["counts"]
        return {"size": seg["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    raise ValueError(f"unsupported segmentation {type(seg).__name__}")


def decode_rle_raster(rle: dict[str, Any]) -> NDArray[np.uint8]:
    """One compressed RLE (``counts`` str or bytes) → its ``(H, W)`` uint8 0/1 raster as pycocotools
    returns it (Fortran-ordered; no extra copy)."""
    counts = rle["counts"]
    if isinstance(counts, str):
        rle = {"size": rle["size"], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle)


def decode_segmentation(seg: Any, height: int, width: int) -> NDArray[np.bool_]:
    """Any COCO segmentation → an ``(height, width)`` bool mask."""
    m = mask_utils.decode(segmentation_to_rle(seg, height, width))
    if m.ndim == 3:
        m = m.max(axis=2)
    return m.astype(bool)


__all__ = [
    "CocoAnnotation",
    "CocoDataset",
    "CocoFormatError",
    "CocoImage",
    "decode_rle_raster",
    "decode_segmentation",
    "parse_coco",
    "read_coco",
    "segmentation_to_rle",
]
