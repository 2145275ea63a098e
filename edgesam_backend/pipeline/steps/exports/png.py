"""``export.png``: PNG masks per image.

* ``instances`` → ``<dir>/instances/<file stem>.png``: 16-bit grey, pixel = 1 + the mask's index in the
  image's records (0 = background); overlapping masks are painted largest first, so smaller masks stay
  visible on top;
* ``semantic`` → ``<dir>/semantic/<file stem>.png``: 8-bit, pixel = 1 + the label's index in
  ``<dir>/labels.json`` (0 = background), painted in the same order.

Every PNG is read back and compared with what was meant to be written.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field, model_validator

from ....fileio import atomic_write_bytes, atomic_write_text
from ...base import ExportRun, ExportStep, StepConfig
from ...maskops import rle_decode
from ...records import ImageItem, ImageResult
from .common import NameGuard, derived_name


class PngExportConfig(StepConfig):
    dir: str = Field("masks", min_length=1, description="output directory (relative to output_dir)")
    instances: bool = Field(True, description="16-bit instance-id PNGs")
    semantic: bool = Field(False, description="8-bit label-index PNGs (+ labels.json)")
    default_label: str = Field("object", min_length=1, description="label of unlabeled masks")

    @model_validator(mode="after")
    def _something(self) -> PngExportConfig:
        if not (self.instances or self.semantic):
            raise ValueError("enable instances and/or semantic")
        return self


def paint(result: ImageResult, values: list[int], dtype: type) -> NDArray[Any]:
    """``(H, W)`` array with ``values[i]`` where mask i is (largest masks painted first)."""
    out = np.zeros((result.height, result.width), dtype=dtype)
    order = sorted(range(len(result.masks)), key=lambda i: (-result.masks[i].area, i))
    for i in order:
        out[rle_decode(result.masks[i].segmentation)] = values[i]
    return out


def _png_bytes(arr: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")  # uint16 → I;16, uint8 → L
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as back:  # validate: the PNG holds exactly these values
        got = np.asarray(back).astype(arr.dtype)
    if not np.array_equal(got, arr):
        raise ValueError("PNG does not read back identically")
    return data


class PngExport(ExportStep):
    Config = PngExportConfig

    def begin(self, run: ExportRun) -> None:
        super().begin(run)
        c: PngExportConfig = self.config
        self.labels = run.labels(c.default_label)
        if c.semantic and len(self.labels) > 255:
            raise self.error(f"{len(self.labels)} labels do not fit an 8-bit semantic PNG")
        self.root = self.output_path(c.dir)
        self.guard = NameGuard("export.png")
        self.count = 0

    def add(self, item: ImageItem, result: ImageResult) -> None:
        c: PngExportConfig = self.config
        name = derived_name(item.file_name, ".png")
        self.guard.check(name, item.file_name)
        if c.instances:
            if len(result.masks) > 65535:
                raise self.error(f"{item.file_name}: more than 65535 masks")
            arr = paint(result, list(range(1, len(result.masks) + 1)), np.uint16)
            atomic_write_bytes(self.root / "instances" / name, _png_bytes(arr))
        if c.semantic:
            idx = {n: i + 1 for i, n in enumerate(self.labels)}
            vals = [idx[m.label if m.label is not None else c.default_label] for m in result.masks]
            atomic_write_bytes(self.root / "semantic" / name, _png_bytes(paint(result, vals, np.uint8)))
        self.count += 1

    def finish(self) -> dict[str, Any]:
        c: PngExportConfig = self.config
        out: dict[str, Any] = {"dir": str(self.root), "images": self.count}
        if c.semantic:
            labels = {"0": "background", **{str(i + 1): n for i, n in enumerate(self.labels)}}
            atomic_write_text(self.root / "labels.json", json.dumps(labels, indent=2) + "\n")
        return out


__all__ = ["PngExport", "PngExportConfig", "paint"]
