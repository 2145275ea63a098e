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

#: The official model input side; a model's own side is its ``image_size`` (checkpoint / ONNX metadata).
IMAGE_SIZE = 1024
LOW_RES_SIZE = 256
#: Encoder stride (model side / embedding side) and low-res grid factor (model side / low-res side).
EMBED_STRIDE = 16
LOW_RES_STRIDE = 4


def low_res_size(image_size: int = IMAGE_SIZE) -> int:
    """Side of the low-res logit grid of a model with input side ``image_size`` (1024 → 256)."""
    return image_size // LOW_RES_STRIDE


def image_size_of_embeddings(embeddings: NDArray[np.float32]) -> int:
    """Model input side of ``(..., E, E)`` image embeddings: ``16 E`` (64 → 1024)."""
    return int(embeddings.shape[-1]) * EMBED_STRIDE


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


def preprocess(
    image: NDArray[np.uint8], image_size: int = IMAGE_SIZE
) -> tuple[NDArray[np.float32], tuple[int, int]]:
    """Original RGB image → (model input ``(1, 3, S, S)``, input size ``(h, w)``), ``S = image_size``."""
    resized = resize_longest_side(image, image_size)
    return normalize_and_pad(resized, image_size), (resized.shape[0], resized.shape[1])


def apply_coords(
    coords: ArrayLike, original_hw: tuple[int, int], long_side: int = IMAGE_SIZE
) -> NDArray[np.float32]:
    """(x, y) points ``(..., 2)`` in the original frame → model frame (float64 math, float32 out).

    ``long_side`` is the model input size (1024; smaller only for scaled-down training)."""
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    c = np.array(coords, dtype=np.float64, copy=True)
    if c.shape[-1:] != (2,):
        raise ValueError(f"point coordinates must have shape (..., 2), got {c.shape}")
    c[..., 0] = c[..., 0] * (new_w / old_w)
    c[..., 1] = c[..., 1] * (new_h / old_h)
    return c.astype(np.float32)


def apply_boxes(
    boxes: ArrayLike, original_hw: tuple[int, int], long_side: int = IMAGE_SIZE
) -> NDArray[np.float32]:
    """XYXY boxes ``(..., 4)`` in the original frame → model frame."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4) in XYXY order, got {b.shape}")
    return apply_coords(b.reshape(*b.shape[:-1], 2, 2), original_hw, long_side).reshape(b.shape)


def model_to_original_coords(
    coords: ArrayLike, original_hw: tuple[int, int], long_side: int = IMAGE_SIZE
) -> NDArray[np.float64]:
    """Inverse of :func:`apply_coords`: model-frame (x, y) ``(..., 2)`` → original-frame pixels."""
    old_h, old_w = original_hw
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
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
    # OpenCV's fast paths cover 1-4 channels; more channels per call take a 10-30x slower generic path.
    for s in range(0, x.shape[0], 4):
        chunk = np.ascontiguousarray(x[s : s + 4].transpose(1, 2, 0))
        r = cv2.resize(chunk, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
        out[s : s + 4] = r.reshape(hw[0], hw[1], -1).transpose(2, 0, 1)
    return out


def upscale_logits(
    low_res: NDArray[np.float32], input_hw: tuple[int, int], original_hw: tuple[int, int]
) -> NDArray[np.float32]:
    """Low-res logits ``(K, L, L)`` → original-frame logits ``(K, H, W)``; the model side is ``S = 4L``
    (256 → 1024).

    SAM's ``postprocess_masks``: bilinear to ``S x S``, crop to the pre-pad ``input_hw``, bilinear to
    ``original_hw``.
    """
    x = np.asarray(low_res, dtype=np.float32)
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"expected (K, L, L) low-res logits, got {x.shape}")
    size = x.shape[-1] * LOW_RES_STRIDE
    x = _resize_stack(x, (size, size))
    x = x[:, : input_hw[0], : input_hw[1]]
    return _resize_stack(np.ascontiguousarray(x), (int(original_hw[0]), int(original_hw[1])))


def _check_image(image: NDArray[np.uint8]) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got {getattr(image, 'shape', type(image))}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image is empty")


# --- automatic mask generation: point grids, crop boxes, crop-edge tests (SAM's geometry) ----------


def build_point_grid(n_per_side: int) -> NDArray[np.float64]:
    """``(n², 2)`` (x, y) points normalised to [0, 1]: an evenly spaced ``n x n`` grid whose points sit at
    the centres of ``n`` equal cells per side (offset ``1/(2n)``, spacing ``1/n``), x varying fastest —
    SAM's ``build_point_grid``. Multiply by ``(W, H)`` for pixels."""
    n = int(n_per_side)
    if n < 1:
        raise ValueError(f"a point grid needs at least 1 point per side, got {n_per_side!r}")
    offset = 1.0 / (2 * n)
    side = np.linspace(offset, 1.0 - offset, n)
    xs = np.tile(side[None, :], (n, 1))
    ys = np.tile(side[:, None], (1, n))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[NDArray[np.float64]]:
    """One grid per crop layer ``0..n_layers``: layer ``i`` has ``int(n_per_side / scale_per_layer**i)``
    points per side (SAM's rule)."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(int(n_layers) + 1)]


def generate_crop_boxes(
    original_hw: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """SAM's crop boxes: XYXY integer boxes and their layer indices.

    Layer 0 is the whole image; layer ``i >= 1`` tiles the image with ``2**i x 2**i`` crops that overlap
    by ``int(overlap_ratio * min(H, W) * 2 / 2**i)`` pixels; each crop is
    ``ceil((overlap * (n - 1) + side) / n)`` long and starts at ``(len - overlap) * j``, clipped to the
    image. Crops are listed x-major (for each x0, every y0), as SAM does.
    """
    im_h, im_w = int(original_hw[0]), int(original_hw[1])
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers = [0]
    for i_layer in range(int(n_layers)):
        n = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n))
        crop_w = int(np.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(np.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * j) for j in range(n)]
        y0s = [int((crop_h - overlap) * j) for j in range(n)]
        for x0 in x0s:
            for y0 in y0s:
                boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
                layers.append(i_layer + 1)
    return boxes, layers


def box_xyxy_to_xywh(boxes: ArrayLike) -> NDArray:
    """XYXY ``(..., 4)`` → XYWH (``w = x1 - x0``, ``h = y1 - y0``), dtype kept."""
    b = np.array(boxes, copy=True)
    b[..., 2] = b[..., 2] - b[..., 0]
    b[..., 3] = b[..., 3] - b[..., 1]
    return b


def is_box_near_crop_edge(
    boxes: ArrayLike, crop_box: ArrayLike, original_hw: tuple[int, int], atol: float = 20.0
) -> NDArray[np.bool_]:
    """``(N,)`` whether each XYXY box (original frame) lies within ``atol`` pixels of an edge of
    ``crop_box`` (XYXY) that is not also an edge of the image — SAM's ``is_box_near_crop_edge``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    crop = np.asarray(crop_box, dtype=np.float64).reshape(1, 4)
    image = np.array([[0.0, 0.0, float(original_hw[1]), float(original_hw[0])]])
    near_crop = np.abs(b - crop) <= atol
    near_image = np.abs(b - image) <= atol
    return np.any(near_crop & ~near_image, axis=1)


# --- box conventions: COCO XYWH, clipping -------------------------------------------------------


def box_xywh_to_xyxy(boxes: ArrayLike) -> NDArray[np.float64]:
    """COCO XYWH ``(..., 4)`` → XYXY float64 (``x1 = x + w``, ``y1 = y + h``)."""
    b = np.array(boxes, dtype=np.float64, copy=True)
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have shape (..., 4), got {b.shape}")
    b[..., 2] = b[..., 0] + b[..., 2]
    b[..., 3] = b[..., 1] + b[..., 3]
    return b


def clip_boxes(boxes: ArrayLike, hw: tuple[int, int]) -> NDArray[np.float64]:
    """Clip XYXY boxes ``(..., 4)`` to an ``(H, W)`` image (``0 <= x <= W``, ``0 <= y <= H``)."""
    b = np.array(boxes, dtype=np.float64, copy=True)
    b[..., 0::2] = np.clip(b[..., 0::2], 0.0, float(hw[1]))
    b[..., 1::2] = np.clip(b[..., 1::2], 0.0, float(hw[0]))
    return b
