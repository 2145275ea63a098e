"""Image decoding: any Pillow-readable file or bytes → ``(H, W, 3)`` uint8 RGB, EXIF-orientation applied.

Guards against decompression bombs (``max_pixels``) and reports unreadable data as :class:`ImageError`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit (width x height): 100 megapixels.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """The data is not a decodable image, or it exceeds the configured limits."""


def load_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
    name: str | None = None,
) -> NDArray[np.uint8]:
    """Decode ``source`` (a path or the encoded bytes) to an ``(H, W, 3)`` uint8 RGB array.

    EXIF orientation is applied (so pixel coordinates match what viewers such as Label Studio show);
    palette, grey, 16-bit, CMYK and alpha images are converted to RGB (alpha is dropped). ``name``
    (default: the path, or ``<bytes>``) is what error messages call the image.
    """
    if name is None:
        name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if not isinstance(source, bytes | bytearray) and not Path(source).is_file():
        raise ImageError(f"image file not found: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")
            with fp, Image.open(fp) as img:
                w, h = img.size
                if max_pixels is not None and w * h > max_pixels:
                    raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
                img.load()
                if exif_transpose:
                    img = ImageOps.exif_transpose(img)
                return _to_rgb(img)
    except UnidentifiedImageError:
        # Pillow's message names the file object (``<_io.BytesIO object at 0x...>``), not the image
        raise ImageError(f"{name}: not a decodable image (unknown or corrupt image format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name}: not a decodable image ({exc})") from None
    except OSError as exc:
        raise ImageError(f"{name}: cannot decode image ({exc})") from None


#: Rows converted at a time from 16/32-bit grey to 8-bit (bounds the float64 temporaries).
ROWS_PER_CHUNK = 256


def _to_rgb(img: Image.Image) -> NDArray[np.uint8]:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grey → 8-bit scaled by the maximum, a band of rows at a time: the only full-size
        # arrays are Pillow's own and the (H, W, 3) uint8 output (no float64 copy of the image)
        arr = np.asarray(img)
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / max(hi, 1.0)
        out = np.empty((*arr.shape, 3), dtype=np.uint8)
        for r in range(0, arr.shape[0], ROWS_PER_CHUNK):
            band = (arr[r : r + ROWS_PER_CHUNK].astype(np.float64) * scale).round().astype(np.uint8)
            out[r : r + ROWS_PER_CHUNK] = band[..., None]
        return out
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
