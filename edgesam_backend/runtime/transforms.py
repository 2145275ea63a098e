"""The one coordinate-transform module: image resizing, prompt coordinates, mask upscaling.

Frames used throughout edgesam-backend:

* **original** — pixels of the decoded (EXIF-corrected) image, ``(H, W)``; points are (x, y) with x
  the column, (0, 0) the top-left pixel's corner region as SAM uses it (no +0.5 here).
* **input** — the image resized so its longest side is 1024: ``(h, w) = preprocess_shape(H, W)``.
* **model** — the 1024x1024 zero-padded model input; identical to *input* coordinates (padding is
  at the bottom/right), so prompts in the model frame are ``x * w/W, y * h/H``.
* **low-res** — the 256x256 logit grid covering the 1024x1024 model frame (4 model pixels a cell).

Everything here is numpy (plus Pillow for the resize and OpenCV for logit upscaling); the PyTorch
predictor uses the same functions, so both paths see identical numbers.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image

IMAGE_SIZE = 1024
LOW_RES_SIZE = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def preprocess_shape(h: int, w: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """Resized ``(h, w)`` with the longest side ``long_side``: ``int(side * scale + 0.5)`` (SAM's rule)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def resize_longest_side(image: NDArray[np.uint8], long_side: int = IMAGE_SIZE) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB → ``(h, w, 3)`` uint8 with Pillow's antialiased bilinear resize
    (exactly what the official ``ResizeLongestSide.apply_image`` does through torchvision)."""
    _check_image(image)
    h, w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (h, w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR))


def normalize_and_pad(resized: NDArray[np.uint8], size: int = IMAGE_SIZE) -> NDArray[np.float32]:
    """``(h, w, 3)`` uint8 → ``(1, 3, size, size)`` float32: ``(x - mean) / std``, zero pad bottom/right."""
    h, w = resized.shape[:2]
    out = np.zeros((1, 3, size, size), dtype=np.float32)
    chw = resized.transpose(2, 0, 1).astype(np.float32)
    out[0, :, :h, :w] = (chw - PIXEL_MEAN[:, None, None]) / PIXEL_STD[:, None, None]
    return out


def preprocess(image: NDArray[np.uint8]) -> tuple[NDArray[np.float32], tuple[int, int]]:
    """Original RGB image → (model input ``(1, 3, 1024, 1024)``, input size ``(h, w)``)."""
    resized = resize_longest_side(image)
    return normalize_and_pad(resized), (resized.shape[0], resized.shape[1])


def apply_coords(coords: ArrayLike, original_hw: tuple[int, int]) -> NDArray[np.float32]:
    """(x, y) points ``(..., 2)`` in the original frame → model frame (float64 math, float32 out)."""
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w)
    c = np.array(coords, dtype=np.float64, copy=True)
    if c.shape[-1:] != (2,):
        raise ValueError(f"point coordinates must have shape (..., 2), got {c.shape}")
    c[..., 0] = c[..., 0] * (new_w / old_w)
    c[..., 1] = c[..., 1] * (new_h / old_h)
    return c.astype(np.float32)


def apply_boxes(boxes: ArrayLike, original_hw: tuple[int, int]) -> NDArray[np.float32]:
    """XYXY boxes ``(..., 4)`` in the original frame → model frame."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4) in XYXY order, got {b.shape}")
    return apply_coords(b.reshape(*b.shape[:-1], 2, 2), original_hw).reshape(b.shape)


def model_to_original_coords(coords: ArrayLike, original_hw: tuple[int, int]) -> NDArray[np.float64]:
    """Inverse of :func:`apply_coords`: model-frame (x, y) ``(..., 2)`` → original-frame pixels."""
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w)
    c = np.array(coords, dtype=np.float64, copy=True)
    c[..., 0] *= old_w / new_w
    c[..., 1] *= old_h / new_h
    return c


def _resize_stack(x: NDArray[np.float32], hw: tuple[int, int]) -> NDArray[np.float32]:
    """Bilinear (half-pixel centres, no antialias: ``F.interpolate(align_corners=False)``) resize of
    ``(K, h, w)`` to ``(K, *hw)``."""
    if x.shape[1:] == hw:
        return x
    out = np.empty((x.shape[0], *hw), dtype=np.float32)
    # OpenCV handles at most 512 channels per call; channel-last views keep it to one pass each.
    for s in range(0, x.shape[0], 512):
        chunk = np.ascontiguousarray(x[s : s + 512].transpose(1, 2, 0))
        r = cv2.resize(chunk, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        out[s : s + 512] = r.reshape(hw[0], hw[1], -1).transpose(2, 0, 1)
    return out


def upscale_logits(
    low_res: NDArray[np.float32], input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Low-res logits ``(K, 256, 256)`` → original-frame logits ``(K, H, W)``.

    SAM's ``postprocess_masks``: bilinear to 1024x1024, crop to the pre-pad ``input_hw``, bilinear to
    ``original_hw``.
    """
    x = np.asarray(low_res, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (K, 256, 256) logits, got {x.shape}")
    x = _resize_stack(x, (IMAGE_SIZE, IMAGE_SIZE))
    x = x[:, : input_hw[0], : input_hw[1]]
    return _resize_stack(np.ascontiguousarray(x), (int(original_hw[0]), int(original_hw[1])))


def _check_image(image: NDArray[np.uint8]) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image is empty")
