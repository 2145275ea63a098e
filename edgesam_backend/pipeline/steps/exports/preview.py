"""``export.preview``: mask overlays per image and one static HTML gallery to eyeball a run.

``<dir>/images/<file stem>.jpg``: the image (longest side at most ``max_side``) with every mask filled in
a colour of its own (largest first) and outlined; ``<dir>/index.html``: one self-contained page (no
scripts, no network) with a card per image — overlay, file name, mask count, mean / min / max score,
label counts — sorted in source order, plus run totals. Images are opened once more to draw them.
The page and every overlay are read back to check that they are complete.
"""

from __future__ import annotations

import colorsys
import html
import io
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field

from ....fileio import atomic_write_bytes, atomic_write_text
from ...base import ExportRun, ExportStep, StepConfig
from ...maskops import rle_decode
from ...records import ImageItem, ImageResult
from .common import NameGuard, derived_name


class PreviewExportConfig(StepConfig):
    dir: str = Field("preview", min_length=1, description="output directory (relative to output_dir)")
    max_side: int = Field(1024, ge=64, description="longest side of the overlays (pixels)")
    alpha: float = Field(0.45, ge=0.0, le=1.0, description="mask fill opacity")
    outline: bool = Field(True, description="draw mask outlines")
    quality: int = Field(85, ge=10, le=100, description="JPEG quality of the overlays")
    title: str | None = Field(None, description="page title (default: the pipeline name)")


def mask_color(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic RGB colour for mask ``i`` (golden-ratio hues)."""
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(
    image: NDArray[np.uint8], result: ImageResult, max_side: int, alpha: float, outline: bool
) -> NDArray[np.uint8]:
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else image.copy()
    out = base.astype(np.float32)
    order = sorted(range(len(result.masks)), key=lambda i: (-result.masks[i].area, i))
    contours = []
    for i in order:
        m = rle_decode(result.masks[i].segmentation).astype(np.uint8)
        if scale < 1.0:
            m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        sel = m > 0
        color = np.array(mask_color(i), np.float32)
        out[sel] = out[sel] * (1.0 - alpha) + color * alpha
        if outline:
            cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            contours.append((cs, mask_color(i)))
    res = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    for cs, color in contours:
        cv2.drawContours(res, cs, -1, color, 1)
    return res


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#111;color:#eee}
h1{font-size:1.3rem;margin:0 0 .3rem}
.totals{color:#aaa;margin-bottom:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
.card{background:#1d1d1d;border-radius:6px;overflow:hidden}
.card img{width:100%;display:block}
.meta{padding:.5rem .7rem;font-size:.85rem;line-height:1.4}
.name{font-weight:600;word-break:break-all}
.zero{color:#f66}
.labels{color:#9ab}
"""


class PreviewExport(ExportStep):
    Config = PreviewExportConfig

    def begin(self, run: ExportRun) -> None:
        super().begin(run)
        self.root = self.output_path(self.config.dir)
        self.cards: list[str] = []
        self.guard = NameGuard("export.preview")
        self.total_masks = 0
        self.files: list[str] = []

    def add(self, item: ImageItem, result: ImageResult) -> None:
        c: PreviewExportConfig = self.config
        image = self.run.load_image(item)
        if image.shape[:2] != (result.height, result.width):
            raise self.error(
                f"{item.file_name} is {image.shape[1]}x{image.shape[0]}, the result is for "
                f"{result.width}x{result.height} (the image changed?)"
            )
        name = derived_name(item.file_name, ".jpg")
        self.guard.check(name, item.file_name)
        buf = io.BytesIO()
        Image.fromarray(overlay(image, result, c.max_side, c.alpha, c.outline)).save(
            buf, format="JPEG", quality=c.quality
        )
        atomic_write_bytes(self.root / "images" / name, buf.getvalue())
        self.files.append(name)
        scores = [m.score for m in result.masks if m.score is not None]
        labels: dict[str, int] = {}
        for m in result.masks:
            key = m.label if m.label is not None else "(unlabeled)"
            labels[key] = labels.get(key, 0) + 1
        n = len(result.masks)
        self.total_masks += n
        score_txt = (
            f"score mean {np.mean(scores):.3f} · min {min(scores):.3f} · max {max(scores):.3f}"
            if scores
            else "no scores"
        )
        label_txt = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(labels.items()))
        self.cards.append(
            f'<div class="card"><a href="images/{html.escape(name)}"><img loading="lazy" '
            f'src="images/{html.escape(name)}" alt="{html.escape(item.file_name)}"></a>'
            f'<div class="meta"><div class="name">{html.escape(item.file_name)}</div>'
            f'<div class="{"zero" if n == 0 else "count"}">{n} masks · {result.width}×{result.height}</div>'
            f"<div>{score_txt}</div>"
            + (f'<div class="labels">{label_txt}</div>' if label_txt else "")
            + "</div></div>"
        )

    def finish(self) -> dict[str, Any]:
        c: PreviewExportConfig = self.config
        title = html.escape(c.title or self.run.pipeline_name)
        n = len(self.cards)
        mean = self.total_masks / n if n else 0.0
        page = (
            '<!doctype html>\n<html><head><meta charset="utf-8">'
            f"<title>{title}</title><style>{_CSS}</style></head><body>\n"
            f'<h1>{title}</h1>\n<div class="totals">{n} images · {self.total_masks} masks · '
            f"{mean:.1f} masks per image · config {html.escape(self.run.config_hash[:12])}</div>\n"
            '<div class="grid">\n' + "\n".join(self.cards) + "\n</div>\n</body></html>\n"
        )
        if page.count('<div class="card">') != len(self.files):
            raise self.error("the gallery does not list every image")
        for name in self.files:  # every overlay decodes
            with Image.open(self.root / "images" / name) as im:
                im.verify()
        atomic_write_text(self.root / "index.html", page)
        return {"index": str(self.root / "index.html"), "images": n, "masks": self.total_masks}


__all__ = ["PreviewExport", "PreviewExportConfig", "mask_color", "overlay"]
