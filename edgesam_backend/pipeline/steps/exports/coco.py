"""``export.coco``: a COCO instances file with RLE (pycocotools) or polygon segmentations.

Images keep the source's ids (COCO image ids, Label Studio task ids; else 1..N in source order);
categories keep the source's COCO ids where known, other labels get the next free ids; unlabeled masks
(grid, proposals) go to ``default_label``. Annotations carry ``score``, ``predicted_iou`` and
``stability_score`` next to COCO's fields, so the file also works as a results file. The written file is
loaded back with ``pycocotools.coco.COCO`` and every segmentation is rasterised and checked.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

from pydantic import Field

from ....fileio import atomic_write_text
from ....formats.polygons import mask_polygons
from ...base import ExportRun, ExportStep, PipelineError, StepConfig
from ...maskops import rle_decode
from ...records import ImageItem, ImageResult


class CocoExportConfig(StepConfig):
    path: str = Field("coco.json", min_length=1, description="output file (relative to output_dir)")
    polygons: bool = Field(False, description="write polygons instead of RLE (holes and tiny parts are lost)")
    polygon_tolerance: float = Field(
        1.0, ge=0.0, description="Douglas-Peucker tolerance of polygons (pixels)"
    )
    default_label: str = Field("object", min_length=1, description="category of unlabeled masks")
    indent: int | None = Field(None, ge=0, description="JSON indentation (null: compact)")


def _image_id(item: ImageItem) -> int:
    return item.id if isinstance(item.id, int) and not isinstance(item.id, bool) else item.index + 1


class CocoExport(ExportStep):
    Config = CocoExportConfig

    def begin(self, run: ExportRun) -> None:
        super().begin(run)
        c: CocoExportConfig = self.config
        names = run.labels(c.default_label)
        ids: dict[str, int] = {}
        used = set()
        for n in names:
            cid = run.category_ids.get(n)
            if cid is not None and cid not in used:
                ids[n] = cid
                used.add(cid)
        nxt = max(used, default=0) + 1
        for n in names:
            if n not in ids:
                ids[n] = nxt
                used.add(nxt)
                nxt += 1
        self.cat_ids = ids
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.image_ids: set[int] = set()

    def add(self, item: ImageItem, result: ImageResult) -> None:
        c: CocoExportConfig = self.config
        iid = _image_id(item)
        if iid in self.image_ids:
            raise self.error(f"duplicate image id {iid} ({item.file_name})")
        self.image_ids.add(iid)
        self.images.append(
            {"id": iid, "file_name": item.file_name, "width": result.width, "height": result.height}
        )
        for m in result.masks:
            label = m.label if m.label is not None else c.default_label
            if c.polygons:
                polys = mask_polygons(rle_decode(m.segmentation), c.polygon_tolerance)
                seg: Any = [[round(float(v), 2) for v in p.reshape(-1)] for p in polys]
                if not seg:
                    continue  # too small to draw as a polygon
            else:
                seg = m.segmentation
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": iid,
                    "category_id": self.cat_ids[label],
                    "segmentation": seg,
                    "area": m.area,
                    "bbox": [round(v, 2) for v in m.bbox],
                    "iscrowd": 0,
                    "score": m.score,
                    "predicted_iou": m.predicted_iou,
                    "stability_score": m.stability_score,
                }
            )

    def finish(self) -> dict[str, Any]:
        c: CocoExportConfig = self.config
        doc = {
            "info": {
                "description": self.run.pipeline_name,
                "version": "1.0",
                "contributor": "edgesam-backend pipeline",
                "config_hash": self.run.config_hash,
            },
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": [
                {"id": cid, "name": n, "supercategory": ""}
                for n, cid in sorted(self.cat_ids.items(), key=lambda t: t[1])
            ],
        }
        path = self.output_path(c.path)
        text = json.dumps(doc, indent=c.indent, separators=None if c.indent else (",", ":"))
        validate_coco_text(text, polygons=c.polygons, what=str(path))
        atomic_write_text(path, text + "\n")
        return {"path": str(path), "images": len(self.images), "annotations": len(self.annotations)}


def validate_coco_text(text: str, *, polygons: bool = False, what: str = "COCO file") -> None:
    """Load with pycocotools and rasterise every annotation (sizes, areas for RLE); raise on problems."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    coco = COCO()
    try:
        coco.dataset = json.loads(text)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        for ann in coco.dataset["annotations"]:
            img = coco.imgs[ann["image_id"]]
            rle = coco.annToRLE(ann)
            if list(rle["size"]) != [img["height"], img["width"]]:
                raise ValueError(f"annotation {ann['id']}: mask size {rle['size']} != image size")
            if not polygons and int(mask_utils.area(rle)) != ann["area"]:
                raise ValueError(f"annotation {ann['id']}: area {ann['area']} != RLE area")
            if ann["category_id"] not in coco.cats:
                raise ValueError(f"annotation {ann['id']}: unknown category {ann['category_id']}")
    except (KeyError, ValueError, TypeError, AssertionError) as exc:
        raise PipelineError(f"export.coco: {what} does not validate with pycocotools: {exc}") from None


__all__ = ["CocoExport", "CocoExportConfig", "validate_coco_text"]
