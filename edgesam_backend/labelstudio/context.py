"""Interactive context (``params.context.result``) → a prompt in the image's pixel frame.

Label Studio sends every region of the current annotation that has the same type, label and image
as the one just drawn: smart keypoints (``is_positive`` true = positive, false = negative; a manual
keypoint without ``is_positive`` counts as positive) or smart rectangles (the last one is the box
prompt). Coordinates are percent of ``original_width``/``original_height``; they are converted to
**float** pixels (``x / 100 * width``, not rounded; see
:func:`edgesam_backend.formats.labelstudio.coords.percent_to_pixels`). A rectangle is kept in percent
as Label Studio sent it and converted to a pixel box once, in :func:`to_pixels`.

Rotation (``image_rotation``, clockwise degrees). Label Studio 1.23.2 rotates the view only: region
percentages and ``original_width``/``height`` stay in the unrotated image's frame, so the prompt is
used as is and the mask is returned in that frame with the same ``image_rotation``. Older versions
(and other clients) sent coordinates of the rotated view with swapped ``original_width``/``height``;
that case is recognised when the rotation is 90/270 and the sizes are swapped with respect to the
decoded image (a non-square one): the prompt is rotated back and the mask rotated into the view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..formats.labelstudio import coords
from ..formats.labelstudio.coords import Rectangle
from .config import LabelConfig
from .errors import Unprocessable

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")
EPS = 1e-6


@dataclass(frozen=True)
class RawPrompt:
    """The prompt as Label Studio sent it (percent units)."""

    points_pct: NDArray[np.float64]  # (N, 2)
    point_labels: NDArray[np.int64]  # (N,)
    rect: Rectangle | None  # the last rectangle, percent of (width, height) as sent
    label: str | None
    to_name: str | None
    width: int  # original_width as sent
    height: int  # original_height as sent
    rotation: int  # clockwise degrees as sent

    @property
    def n_points(self) -> int:
        return int(self.points_pct.shape[0])


@dataclass(frozen=True)
class PixelPrompt:
    """The prompt in the decoded image's pixel frame, plus how to present the mask."""

    point_coords: NDArray[np.float64] | None  # (N, 2) or None
    point_labels: NDArray[np.int64] | None
    box: NDArray[np.float64] | None  # (4,) XYXY
    output_rotation: int  # rotate the image-frame mask by this before encoding (0 in LS 1.23.2)
    image_rotation: int  # echoed in the result


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise Unprocessable(f"{where} must be a finite number, got {v!r}")
    return float(v)


def _pct(v: Any, where: str, what: str) -> float:
    x = _num(v, where)
    if x < -EPS or x > 100 + EPS:
        raise Unprocessable(f"{where} = {x:g} is outside 0-100 (percent of {what})")
    return min(max(x, 0.0), 100.0)


def _is_positive(v: Any, where: str) -> int:
    if v is None:
        return 1
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float) and v in (0, 1):
        return int(v)
    if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
        return int(v.lower() in ("true", "1"))
    raise Unprocessable(f"{where} must be true or false, got {v!r}")


def _labels_of(item: dict, kind: str) -> list[str]:
    value = item.get("value") or {}
    for key in (kind, "labels"):
        labs = value.get(key)
        if isinstance(labs, list) and labs:
            if not all(isinstance(x, str) for x in labs):
                raise Unprocessable(f"value.{key} must be a list of label names, got {labs!r}")
            return labs
    return []


def parse_context(context: Any, config: LabelConfig) -> RawPrompt:
    """Validate ``params.context`` and collect the prompt; raises :class:`Unprocessable` (422)."""
    if not isinstance(context, dict):
        raise Unprocessable("params.context must be an object with a 'result' list")
    result = context.get("result")
    if not isinstance(result, list) or not result:
        raise Unprocessable("params.context.result must be a non-empty list of regions")
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    rect: Rectangle | None = None
    label: str | None = None
    to_name: str | None = None
    size: tuple[int, int, int] | None = None
    used = 0
    for i, item in enumerate(result):
        where = f"context.result[{i}]"
        if not isinstance(item, dict):
            raise Unprocessable(f"{where} must be an object")
        kind = item.get("type")
        if kind not in PROMPT_TYPES:
            continue  # other regions (e.g. earlier brush results) are not prompts
        used += 1
        w, h = item.get("original_width"), item.get("original_height")
        if w is None or h is None:
            raise Unprocessable(f"{where}: original_width and original_height are required")
        wf, hf = _num(w, f"{where}.original_width"), _num(h, f"{where}.original_height")
        if wf < 1 or hf < 1 or wf != int(wf) or hf != int(hf):
            raise Unprocessable(
                f"{where}: original_width/original_height must be positive integers, got {w}x{h}"
            )
        try:
            rot = coords.normalize_rotation(item.get("image_rotation") or 0)
        except (ValueError, TypeError):
            raise Unprocessable(
                f"{where}.image_rotation must be a multiple of 90 degrees, got {item.get('image_rotation')!r}"
            ) from None
        this = (int(wf), int(hf), rot)
        if size is not None and this != size:
            raise Unprocessable(
                f"{where}: original size/rotation {this} differs from the earlier regions' {size}"
            )
        size = this
        value = item.get("value")
        if not isinstance(value, dict):
            raise Unprocessable(f"{where}.value must be an object")
        x = _pct(value.get("x"), f"{where}.value.x", "original_width")
        y = _pct(value.get("y"), f"{where}.value.y", "original_height")
        if kind == "keypointlabels":
            points.append((x, y))
            labels.append(_is_positive(item.get("is_positive"), f"{where}.is_positive"))
        else:
            bw = _num(value.get("width"), f"{where}.value.width")
            bh = _num(value.get("height"), f"{where}.value.height")
            if bw < 0 or bh < 0:
                raise Unprocessable(f"{where}: rectangle width/height must be >= 0, got {bw:g}x{bh:g}")
            _pct(x + bw, f"{where}.value.x + width", "original_width")
            _pct(y + bh, f"{where}.value.y + height", "original_height")
            rotation = _num(value.get("rotation") or 0, f"{where}.value.rotation")
            rect = Rectangle(x, y, bw, bh, rotation)  # the last rectangle wins
        labs = _labels_of(item, kind)
        if labs:
            label = labs[0]
        if item.get("to_name"):
            to_name = str(item["to_name"])
    if not used or size is None:
        raise Unprocessable(
            "params.context.result has no keypointlabels or rectanglelabels region to use as a prompt"
        )
    if to_name is not None and to_name != config.image.name:
        raise Unprocessable(
            f"the prompt points at to_name={to_name!r}, but this backend segments <Image name="
            f'"{config.image.name}">'
        )
    if label is not None and label not in config.output_labels:
        tags = ", ".join(f'<{t.tag} name="{t.name}">' for t in config.outputs)
        raise Unprocessable(
            f"label {label!r} is not defined in {tags} (labels: {', '.join(config.output_labels)})"
        )
    w, h, rot = size
    return RawPrompt(
        points_pct=np.asarray(points, dtype=np.float64).reshape(-1, 2),
        point_labels=np.asarray(labels, dtype=np.int64),
        rect=rect,
        label=label,
        to_name=to_name,
        width=w,
        height=h,
        rotation=rot,
    )


def to_pixels(raw: RawPrompt, image_hw: tuple[int, int]) -> PixelPrompt:
    """Convert to the decoded image's frame (``image_hw`` = (H, W) after EXIF orientation); every
    percent value goes to pixels exactly once."""
    H, W = image_hw
    rot = raw.rotation
    rotated_frame = rot in (90, 270) and (raw.width, raw.height) == (H, W) and H != W
    coords_px = None
    box = None
    if rotated_frame:
        # coordinates are in the rotated view (W' = H, H' = W): to pixels there, then rotate back
        if raw.n_points:
            view = coords.percent_to_pixels(raw.points_pct, raw.width, raw.height)
            coords_px = coords.unrotate_points(view, W, H, rot)
        if raw.rect is not None:
            view_box = raw.rect.to_box(raw.width, raw.height).reshape(2, 2)
            corners = coords.unrotate_points(view_box, W, H, rot)
            box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
    else:
        # Label Studio 1.23.2: the unrotated frame. Percentages are relative, so a differing
        # original size (should not happen) is resolved in favour of the decoded image.
        if raw.n_points:
            coords_px = coords.percent_to_pixels(raw.points_pct, W, H)
        if raw.rect is not None:
            box = raw.rect.to_box(W, H)
    return PixelPrompt(
        point_coords=coords_px,
        point_labels=raw.point_labels.copy() if raw.n_points else None,
        box=box,
        output_rotation=rot if rotated_frame else 0,
        image_rotation=rot,
    )
