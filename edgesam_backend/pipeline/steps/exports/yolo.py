"""``export.yolo``: Ultralytics YOLO-seg labels.

``<dir>/labels/<file stem>.txt`` per image (empty for images without masks, YOLO's background images),
one line per mask: ``class x1 y1 x2 y2 ...`` with coordinates normalised to [0, 1]; ``<dir>/data.yaml``
(``names``) and ``<dir>/classes.txt``. YOLO-seg holds one polygon per instance without holes: the
mask's largest outer contour is written (other parts and holes are dropped; masks too small for a
3-point polygon are skipped and counted). Polygons follow :mod:`edgesam_backend.formats.polygons`'
pixel convention; lines are :mod:`edgesam_backend.formats.yolo`'s. Every file is parsed back and checked.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field

from ....fileio import atomic_write_text
from ....formats.polygons import mask_polygons
from ....formats.yolo import polygon_line, validate_yolo_text
from ...base import ExportRun, ExportStep, StepConfig
from ...maskops import rle_decode
from ...records import ImageItem, ImageResult
from .common import NameGuard, derived_name


class YoloExportConfig(StepConfig):
    dir: str = Field("yolo", min_length=1, description="output directory (relative to output_dir)")
    tolerance: float = Field(1.0, ge=0.0, description="polygon simplification (pixels)")
    default_label: str = Field("object", min_length=1, description="class of unlabeled masks")


class YoloExport(ExportStep):
    Config = YoloExportConfig

    def begin(self, run: ExportRun) -> None:
        super().begin(run)
        self.labels = run.labels(self.config.default_label)
        self.root = self.output_path(self.config.dir)
        self.guard = NameGuard("export.yolo")
        self.files = self.instances = self.skipped = 0

    def add(self, item: ImageItem, result: ImageResult) -> None:
        c: YoloExportConfig = self.config
        idx = {n: i for i, n in enumerate(self.labels)}
        lines = []
        for m in result.masks:
            polys = mask_polygons(rle_decode(m.segmentation), c.tolerance)
            if not polys:
                self.skipped += 1
                continue
            cls = idx[m.label if m.label is not None else c.default_label]
            lines.append(polygon_line(cls, polys[0], result.width, result.height))
        text = "\n".join(lines) + ("\n" if lines else "")
        try:
            self.instances += validate_yolo_text(text, len(self.labels))
        except ValueError as exc:
            raise self.error(f"{item.file_name}: invalid YOLO-seg label: {exc}") from None
        name = derived_name(item.file_name, ".txt")
        self.guard.check(name, item.file_name)
        atomic_write_text(self.root / "labels" / name, text)
        self.files += 1

    def finish(self) -> dict[str, Any]:
        names = {i: n for i, n in enumerate(self.labels)}
        atomic_write_text(
            self.root / "data.yaml", yaml.safe_dump({"names": names, "nc": len(names)}, sort_keys=True)
        )
        atomic_write_text(self.root / "classes.txt", "".join(f"{n}\n" for n in self.labels))
        return {
            "dir": str(self.root),
            "label_files": self.files,
            "instances": self.instances,
            "skipped_tiny_masks": self.skipped,
        }


__all__ = ["YoloExport", "YoloExportConfig"]
