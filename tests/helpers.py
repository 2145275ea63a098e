"""Test helpers shared by several test files: a synthetic disc decoder, the Label Studio test config and
project set-up, Label Studio context regions, a free TCP port, pipeline and training configs.
(Fixtures live in ``conftest.py``.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edgesam_backend.runtime.base import BasePredictor
from edgesam_backend.runtime.masks import stability_score

# --- a synthetic decoder -----------------------------------------------------------------------------


class DiscPredictor(BasePredictor):
    """Deterministic stand-in decoder on the 256² low-res grid (cell centres at ``+0.5``).

    Token k is a disc of radius ``radii[k]`` cells around the first point (logit ``radius - distance``),
    or, for a box prompt (label 2 anywhere in the prompt), a disc of the box's half short side around
    its centre; so the token stabilities differ. A mask input grows every disc by ``mask_grow`` cells
    (refinement visibly changes the mask). IoU outputs are ``iou`` per token, minus ``0.01 * (row % 5)``
    with ``iou_jitter`` (so rows rank differently). With ``islands`` every mask also gets a small
    detached blob and a small hole. The encoder returns zeros.

    Recorded: ``calls`` — ``(B, N, has_mask_input)`` per decoder call; ``encoded_hw`` — ``(H, W)`` of
    every encoded image.
    """

    def __init__(
        self,
        radii: tuple[float, float, float, float] = (3.0, 6.0, 9.0, 14.0),
        iou: tuple[float, float, float, float] = (0.1, 0.4, 0.7, 0.9),
        *,
        iou_jitter: bool = True,
        islands: bool = False,
        mask_grow: float = 0.0,
    ) -> None:
        super().__init__()
        self.radii, self.iou, self.iou_jitter = tuple(radii), np.asarray(iou, np.float32), iou_jitter
        self.islands, self.mask_grow = islands, mask_grow
        self.calls: list[tuple[int, int, bool]] = []
        self.encoded_hw: list[tuple[int, int]] = []
        yy, xx = np.mgrid[0:256, 0:256]
        self._yy = (yy + 0.5).astype(np.float64)
        self._xx = (xx + 0.5).astype(np.float64)

    @property
    def batch_sizes(self) -> list[int]:
        """B of every decoder call."""
        return [b for b, _, _ in self.calls]

    def encode(self, image):
        self.encoded_hw.append((int(image.shape[0]), int(image.shape[1])))
        return super().encode(image)

    def _encode_tensor(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.zeros((1, 256, 64, 64), np.float32)

    def _decode(self, embeddings, coords, labels, mask_input):
        """``coords (B, N, 2)`` model-frame pixels, ``labels (B, N)`` → ``(B, 4, 256, 256)`` logits,
        ``(B, 4)`` IoU, ``(B, 4)`` stability."""
        b, n = coords.shape[:2]
        self.calls.append((b, n, mask_input is not None))
        is_box = (labels == 2).any(axis=1)
        box_at = np.argmax(labels == 2, axis=1)
        idx = np.arange(b)
        corner = coords[idx, np.minimum(box_at + 1, n - 1)]
        box_c = (coords[idx, box_at] + corner) / 2
        centres = np.where(is_box[:, None], box_c, coords[:, 0]) / 4.0  # 1024 frame → 256 grid
        half = np.abs(corner - coords[idx, box_at]).min(axis=1) / 8.0
        d = np.hypot(self._xx[None] - centres[:, 0, None, None], self._yy[None] - centres[:, 1, None, None])
        low = np.empty((b, 4, 256, 256), np.float32)
        grow = self.mask_grow if mask_input is not None else 0.0
        for k, r in enumerate(self.radii):
            radius = np.where(is_box, np.maximum(half, 2.0), r) + grow
            low[:, k] = radius[:, None, None] - d
        if self.islands:
            for i in range(b):
                cx, cy = np.floor(centres[i]).astype(int)
                low[i, :, cy : cy + 2, cx : cx + 2] = -5.0  # hole at the centre
                ix = cx + 22 if cx + 24 < 256 else cx - 24
                low[i, :, cy : cy + 2, ix : ix + 2] = 5.0  # island beside the disc
        iou = np.tile(self.iou, (b, 1))
        if self.iou_jitter:
            iou -= (np.arange(b, dtype=np.float32) % 5)[:, None] * 0.01
        return low, iou, stability_score(low)


# --- Label Studio ----------------------------------------------------------------------------------

#: The labeling config of the Label Studio tests: a brush (output) and smart keypoints / rectangles
#: (prompts) on one image, two labels each.
LS_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Foreground" background="#FF0000"/><Label value="Background" background="#0d14d3"/>
  </BrushLabels>
  <KeyPointLabels name="tag2" toName="image" smart="true">
    <Label value="Foreground" smart="true" background="#FFaa00" showInline="true"/>
    <Label value="Background" smart="true" background="#00aaFF" showInline="true"/>
  </KeyPointLabels>
  <RectangleLabels name="tag3" toName="image" smart="true">
    <Label value="Foreground" background="#FF00FF" showInline="true"/>
    <Label value="Background" background="#00FF00" showInline="true"/>
  </RectangleLabels>
</View>"""


def ls_create_project(api: Any, title: str, label_config: str, upload: Path | None = None) -> int:
    """Create a project on a real Label Studio (``api``: its authenticated ``httpx.Client``) and,
    with ``upload``, import that JPEG as its first task; returns the project id."""
    pid = int(api.post("/api/projects", json={"title": title, "label_config": label_config}).json()["id"])
    if upload is not None:
        with open(upload, "rb") as f:
            r = api.post(f"/api/projects/{pid}/import", files={"file": (upload.name, f, "image/jpeg")})
        assert r.status_code == 201, r.text
    return pid


def ls_connect_backend(api: Any, url: str, project: int, extra_params: dict | None = None) -> dict:
    """Register the ML backend at ``url`` as the interactive backend ``edgesam`` of ``project``;
    asserts Label Studio reached it (state ``CO``) and returns the ML backend record."""
    body: dict[str, Any] = {"url": url, "project": project, "title": "edgesam", "is_interactive": True}
    if extra_params is not None:
        body["extra_params"] = extra_params
    r = api.post("/api/ml", json=body)
    assert r.status_code == 201, r.text
    ml = r.json()
    assert ml["state"] == "CO", ml
    return ml


# --- Label Studio context regions ----------------------------------------------------------------------


def ls_keypoint(
    x: float,
    y: float,
    positive: bool | None = True,
    *,
    w: int = 640,
    h: int = 480,
    rot: int = 0,
    label: str = "Foreground",
    labelled: bool | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A ``keypointlabels`` context region at (``x``, ``y``) percent of a ``w`` x ``h`` image shown rotated
    by ``rot``. ``positive=None`` leaves out ``is_positive``; ``labelled`` (default: ``positive`` is not
    None) adds ``keypointlabels: [label]``; ``fields`` are extra top-level keys (``id``, ``origin``)."""
    item: dict[str, Any] = {
        "original_width": w,
        "original_height": h,
        "image_rotation": rot,
        "value": {"x": x, "y": y, "width": 0.26},
        "from_name": "tag2",
        "to_name": "image",
        "type": "keypointlabels",
        **fields,
    }
    if positive is not None:
        item["is_positive"] = positive
    if positive is not None if labelled is None else labelled:
        item["value"]["keypointlabels"] = [label]
    return item


def ls_rectangle(
    x: float,
    y: float,
    bw: float,
    bh: float,
    *,
    w: int = 640,
    h: int = 480,
    label: str = "Foreground",
    **fields: Any,
) -> dict[str, Any]:
    """A ``rectanglelabels`` context region: top-left (``x``, ``y``) and size (``bw``, ``bh``) in percent
    of a ``w`` x ``h`` image, unrotated; ``fields`` are extra top-level keys."""
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": bw, "height": bh, "rotation": 0, "rectanglelabels": [label]},
        "from_name": "tag3",
        "to_name": "image",
        "type": "rectanglelabels",
        **fields,
    }


# --- network -----------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when this returns)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingPredictor:
    """Wraps a predictor: counts ``encode`` calls (``calls``) and delays each by ``delay`` seconds (so
    that concurrent requests overlap); everything else is the wrapped predictor's."""

    def __init__(self, predictor: Any, delay: float = 0.0) -> None:
        self.p, self.delay, self.calls = predictor, delay, 0

    def encode(self, image: Any) -> Any:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.p.encode(image)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.p, name)


# --- pipelines ---------------------------------------------------------------------------------------


#: Pipeline steps (YAML list items, 2-space indented) after ``segment``: a refine pass, then every
#: built-in export (COCO, semantic PNGs, YOLO, Label Studio, previews).
REFINE_AND_EXPORT_ALL = """\
  - kind: refine
    stability_score_thresh: 0.2
    min_mask_region_area: 20
  - kind: export.coco
  - kind: export.png
    semantic: true
  - kind: export.yolo
  - kind: export.labelstudio
  - kind: export.preview
    max_side: 256
"""


def grid_pipeline_yaml(
    onnx: Any, images: Any, output_dir: Any, executor: str = "{type: local}", steps: str = ""
) -> str:
    """A small everything-mode pipeline (2x2 grid, ``source.folder``) as YAML text; ``steps`` (YAML
    list items, 2-space indented) follow the segment step."""
    head = (
        f"model:\n  onnx_dir: {onnx}\nexecutor: {executor}\noutput_dir: {output_dir}\nsteps:\n"
        f"  - kind: source.folder\n    path: {images}\n"
        "  - kind: prompt.grid\n    points_per_side: 2\n  - kind: segment\n"
    )
    return head + steps


# --- training configs --------------------------------------------------------------------------------


def coco_data_section(root: Path) -> dict[str, str]:
    """The ``data:`` section of a distill / eval config for a folder written by
    :func:`edgesam_backend.training.synthetic.write_coco_dataset` (``images/`` + ``annotations.json``)."""
    return {"format": "coco", "images": str(root / "images"), "annotations": str(root / "annotations.json")}
