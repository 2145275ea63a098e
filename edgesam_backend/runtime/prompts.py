"""Prompt packing: user prompts (original-frame pixels) → the decoder's point arrays (model frame).

Points are ``(x, y)`` pixels of the original image; a box is XYXY pixels and goes to the decoder as two
corner points labelled 2/3 (:data:`BOX_LABELS`); see :mod:`edgesam_backend.runtime.transforms`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import transforms
from .proposals import Proposals, box_for_point

#: Labels a user may give for points: 1 positive, 0 negative, -1 padding, -2 dummy (zero token).
POINT_LABELS = (-2, -1, 0, 1)
#: Labels of the two box corners when a box is passed to the decoder as points.
BOX_LABELS = (2.0, 3.0)
#: Hard limit on points in one prompt. The decoder's token-to-image attention grows linearly with the
#: prompt's tokens (10,000 points took 9 GB and 25 s); SAM was trained with at most a few dozen, so
#: this bound keeps one decode's memory within a few MB of the one-point case. Servers set lower
#: limits of their own (``EDGESAM_MAX_PROMPT_POINTS``).
MAX_PROMPT_POINTS = 256
#: How far (pixels) a point or box corner may lie outside ``[0, W] x [0, H]`` (annotation-tool rounding);
#: anything further out is a :class:`PromptError`.
OUTSIDE_TOLERANCE = 1.0


class PromptError(ValueError):
    """A prompt is malformed (shapes, labels, values)."""


def _as_points(point_coords: ArrayLike | None, point_labels: ArrayLike | None) -> tuple[NDArray, NDArray]:
    if point_coords is None:
        if point_labels is not None:
            raise PromptError("point_labels given without point_coords")
        return np.zeros((0, 2)), np.zeros((0,))
    coords = np.asarray(point_coords, dtype=np.float64)
    if coords.ndim == 1 and coords.shape == (2,):
        coords = coords[None]
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise PromptError(f"point_coords must have shape (N, 2) as (x, y), got {coords.shape}")
    if coords.shape[0] > MAX_PROMPT_POINTS:
        raise PromptError(f"a prompt may have at most {MAX_PROMPT_POINTS} points, got {coords.shape[0]}")
    if point_labels is None:
        raise PromptError("point_labels are required with point_coords (1 positive, 0 negative)")
    labels = np.asarray(point_labels, dtype=np.float64).reshape(-1)
    if labels.shape[0] != coords.shape[0]:
        raise PromptError(f"{coords.shape[0]} points but {labels.shape[0]} labels")
    if not np.isfinite(coords).all():
        raise PromptError("point coordinates must be finite")
    bad = sorted({float(v) for v in labels if v not in POINT_LABELS})
    if bad:
        raise PromptError(f"point labels must be in {POINT_LABELS}, got {bad}")
    return coords, labels


def check_inside(
    point_coords: NDArray[np.float64],
    point_labels: NDArray[np.float64],
    box: NDArray[np.float64] | None,
    original_hw: tuple[int, int],
) -> None:
    """Refuse a prompt outside the image: a positive/negative point ``(N, 2)`` or a box corner (XYXY
    original-frame pixels) more than :data:`OUTSIDE_TOLERANCE` pixels outside ``[0, W] x [0, H]``.
    Padding/dummy points (labels -1/-2) are not checked."""
    h, w = int(original_hw[0]), int(original_hw[1])
    tol = OUTSIDE_TOLERANCE

    def outside(x: float, y: float) -> bool:
        return not (-tol <= x <= w + tol and -tol <= y <= h + tol)

    for (x, y), lab in zip(point_coords, point_labels, strict=True):
        if lab in (0, 1) and outside(float(x), float(y)):
            raise PromptError(
                f"point ({x:g}, {y:g}) is outside the {w}x{h} image (x must be in 0..{w}, y in 0..{h}; "
                "points are (x, y) pixels of the original image)"
            )
    if box is not None and (outside(float(box[0]), float(box[1])) or outside(float(box[2]), float(box[3]))):
        raise PromptError(
            f"box ({', '.join(f'{v:g}' for v in box)}) reaches outside the {w}x{h} image "
            f"(x must be in 0..{w}, y in 0..{h}; boxes are x0, y0, x1, y1 pixels of the original image)"
        )


def pack_prompt(
    point_coords: ArrayLike | None,
    point_labels: ArrayLike | None,
    box: ArrayLike | None,
    original_hw: tuple[int, int],
    image_size: int = transforms.IMAGE_SIZE,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Build the decoder's point arrays in the model frame (side ``image_size``).

    Args:
        point_coords: ``(N, 2)`` (x, y) original-frame pixels, or ``None``.
        point_labels: ``(N,)`` labels in :data:`POINT_LABELS`.
        box: ``(4,)`` XYXY original-frame pixels, or ``None``.
    Returns:
        ``coords (1, M, 2)`` float32 model frame and ``labels (1, M)`` float32: the points, then the
        box as two corners labelled 2/3; without a box a (0, 0) point labelled -1 is appended, as
        SAM's prompt encoder does.
    Raises:
        PromptError: malformed prompt, or a point/box outside the image (see :func:`check_inside`).
    """
    coords, labels = _as_points(point_coords, point_labels)
    check_inside(coords, labels, None, original_hw)
    parts_c = [transforms.apply_coords(coords, original_hw, image_size)] if len(coords) else []
    parts_l = [labels.astype(np.float32)] if len(coords) else []
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise PromptError(f"box must be 4 finite numbers x0, y0, x1, y1; got {np.asarray(box).tolist()}")
        if b[2] < b[0] or b[3] < b[1]:
            raise PromptError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1; got {b.tolist()}")
        check_inside(coords, labels, b, original_hw)
        parts_c.append(transforms.apply_boxes(b, original_hw, image_size).reshape(2, 2))
        parts_l.append(np.array(BOX_LABELS, dtype=np.float32))
    elif not len(coords):
        raise PromptError("a prompt needs at least one point or a box")
    else:
        parts_c.append(np.zeros((1, 2), dtype=np.float32))
        parts_l.append(np.array([-1.0], dtype=np.float32))
    c = np.concatenate(parts_c, axis=0).astype(np.float32)[None]
    lab = np.concatenate(parts_l, axis=0).astype(np.float32)[None]
    return c, lab


def check_mask_input(
    mask_input: ArrayLike | None, batch: int = 1, image_size: int = transforms.IMAGE_SIZE
) -> NDArray[np.float32] | None:
    """Validate low-res mask logits ``(L, L)``, ``(1, L, L)`` or ``(B, 1, L, L)``, ``L = image_size / 4``
    (256 at 1024)."""
    if mask_input is None:
        return None
    m = np.asarray(mask_input, dtype=np.float32)
    size = transforms.low_res_size(image_size)
    if m.shape[-2:] != (size, size) or m.ndim > 4 or m.size != batch * size * size:
        raise PromptError(f"mask_input must be {size}x{size} low-res logits (one per prompt), got {m.shape}")
    if not np.isfinite(m).all():
        raise PromptError("mask_input must be finite")
    return m.reshape(batch, 1, size, size)


def prior_prompt(
    point_coords: ArrayLike,
    point_labels: ArrayLike | None,
    proposals: Proposals,
    original_hw: tuple[int, int],
    image_size: int = transforms.IMAGE_SIZE,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """EdgeSAM's granularity prior for a points-only prompt: the points plus the proposal box chosen
    for the last positive point (:func:`~edgesam_backend.runtime.proposals.box_for_point`), or two
    not-a-point box tokens when no proposal contains it.
    Returns model-frame ``coords (1, M, 2)`` and ``labels (1, M)``."""
    coords, labels = _as_points(point_coords, point_labels)
    positives = np.flatnonzero(labels == 1)
    if positives.size == 0:
        return pack_prompt(coords, labels, None, original_hw, image_size)
    box, _ = box_for_point(proposals, coords[positives[-1]])
    if box is not None:
        return pack_prompt(coords, labels, box, original_hw, image_size)
    c, lab = pack_prompt(coords, labels, None, original_hw, image_size)  # points + padding point
    # box-label extension: two not-a-point tokens stand in for the missing box
    c = np.concatenate([c[:, :-1], np.zeros((1, 2, 2), np.float32)], axis=1)
    lab = np.concatenate([lab[:, :-1], np.full((1, 2), -1.0, np.float32)], axis=1)
    return c, lab


__all__ = [
    "BOX_LABELS",
    "MAX_PROMPT_POINTS",
    "OUTSIDE_TOLERANCE",
    "POINT_LABELS",
    "PromptError",
    "check_inside",
    "check_mask_input",
    "pack_prompt",
    "prior_prompt",
]
