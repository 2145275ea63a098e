"""Label Studio's brush RLE (``"format": "rle"``), vectorised with numpy.

This is Label Studio's own bit-packed run-length code (a port of thi.ng's rle-pack), **not** COCO RLE.
The payload encodes a flat RGBA stream of ``H * W * 4`` bytes (every mask pixel repeated 4 times,
255 for foreground so the brush is opaque). Bitstream, most significant bit first:

* header: ``num`` values (32 bits) | ``word_size - 1`` (5 bits, 7 for bytes) | four run-size classes
  minus one (4 bits each; we use 3, 4, 8, 16 bits as Label Studio does);
* records: ``flag`` (1 bit: 1 = a run of one repeated value, 0 = literal values) | ``class`` (2 bits)
  | ``length - 1`` (``sizes[class]`` bits) | the value (a run) or ``length`` values (literals),
  ``word_size`` bits each;
* zero padding to the next byte boundary (a whole zero byte if already aligned, as Label Studio's
  encoder does); the result is a list of ints 0-255.

Every run in an RGBA-repeated mask is at least 4 long, so the encoder only writes run records
(split at 65536, the largest class). The decoder also reads literal records (other encoders emit them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..coco import decode_rle_raster

#: Bits of the ``length - 1`` field of each run-size class.
RLE_SIZES = (3, 4, 8, 16)
WORD_SIZE = 8
CHANNELS = 4
FOREGROUND = 255
_MAX_LEN = np.array([1 << s for s in RLE_SIZES], dtype=np.int64)  # 8, 16, 256, 65536
_RECORDS_PER_CHUNK = 1 << 15  # bounds the temporary bit arrays to a few MB


class RLEError(ValueError):
    """The RLE payload is malformed or does not match the expected image size."""


def _header() -> tuple[int, int]:
    """The 21 bits after ``num``: word size and the four class sizes."""
    v = WORD_SIZE - 1
    for s in RLE_SIZES:
        v = (v << 4) | (s - 1)
    return v, 5 + 4 * len(RLE_SIZES)


_WIDTH = 32  # every field fits 32 bits: the header's ``num`` is the widest; records are <= 27 bits


def _fields_to_bits(codes: NDArray[np.int64], widths: NDArray[np.int64]) -> NDArray[np.uint8]:
    """Concatenate ``codes[i]`` written MSB-first in ``widths[i]`` bits → a 0/1 uint8 array.

    Each code is left-aligned in a big-endian 32-bit word, unpacked to 32 bits a row (numpy's
    ``unpackbits``: 25% faster than shifting int64 rows, measured on a 580 KB noisy brush), and the
    valid prefix of every row, read in row-major order, is the stream.
    """
    aligned = (codes << (_WIDTH - widths)).astype(">u4")
    bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
    return bits[np.arange(_WIDTH)[None, :] < widths[:, None]]


def mask_to_rle(mask: ArrayLike) -> list[int]:
    """Encode an ``(H, W)`` mask (bool, or any dtype with non-zero = foreground) as Label Studio RLE.

    Foreground pixels become 255 in all four RGBA channels, background 0.
    """
    m = np.asarray(mask)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"expected a non-empty (H, W) mask, got shape {m.shape}")
    flat = np.ascontiguousarray(m).reshape(-1) != 0
    n_px = flat.size
    num = n_px * CHANNELS
    if num >= 1 << 32:
        raise ValueError(f"mask of {m.shape[1]}x{m.shape[0]} pixels is too large for Label Studio RLE")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    lengths = (np.diff(np.concatenate((starts, [n_px])))).astype(np.int64) * CHANNELS
    values = flat[starts]
    # split runs longer than the largest class allows
    max_len = int(_MAX_LEN[-1])
    pieces = -(-lengths // max_len)
    rec_val = np.repeat(values, pieces).astype(np.int64) * FOREGROUND
    rec_len = np.full(int(pieces.sum()), max_len, dtype=np.int64)
    rec_len[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * max_len
    cls = np.searchsorted(_MAX_LEN, rec_len, side="left").astype(np.int64)
    size_bits = np.asarray(RLE_SIZES, dtype=np.int64)[cls]
    widths = 1 + 2 + size_bits + WORD_SIZE
    codes = (
        (np.int64(1) << (widths - 1))
        | (cls << (size_bits + WORD_SIZE))
        | ((rec_len - 1) << WORD_SIZE)
        | rec_val
    )
    head, head_bits = _header()
    out: list[NDArray[np.uint8]] = []
    carry = _fields_to_bits(np.array([num, head], dtype=np.int64), np.array([32, head_bits], dtype=np.int64))
    for s in range(0, len(codes), _RECORDS_PER_CHUNK):
        bits = np.concatenate(
            (carry, _fields_to_bits(codes[s : s + _RECORDS_PER_CHUNK], widths[s:][:_RECORDS_PER_CHUNK]))
        )
        full = len(bits) // 8 * 8
        out.append(np.packbits(bits[:full]))
        carry = bits[full:]
    # zero padding: 1-8 bits, i.e. a whole zero byte when the stream ends on a byte boundary, exactly
    # as label_studio_sdk's encoder does (so the bytes are identical to Label Studio's own)
    out.append(np.packbits(np.concatenate((carry, np.zeros(8 - len(carry), np.uint8)))))
    return np.concatenate(out).tolist()


def coco_to_rle(segmentation: dict[str, Any]) -> list[int]:
    """A COCO RLE (``{"size": [H, W], "counts": str | bytes}``) → Label Studio RLE of the same mask.

    COCO runs are column-major and Label Studio's row-major, so the runs cannot be carried over; the
    mask is rasterised once (pycocotools' uint8 ``(H, W)``, no bool copy) and encoded from that.
    """
    return mask_to_rle(decode_rle_raster(segmentation))


def rle_length(rle: Sequence[int]) -> int:
    """The ``num`` field of the header: how many values (``H * W * 4``) the payload declares;
    ``-1`` when there is no complete 32-bit header."""
    head = list(rle[:4])
    if len(head) != 4 or any(not isinstance(v, int) or not 0 <= v <= 255 for v in head):
        return -1
    return int.from_bytes(bytes(head), "big")


class _BitReader:
    def __init__(self, data: NDArray[np.uint8]) -> None:
        self.bits = "".join(np.unpackbits(data).astype("U1").tolist()) if len(data) else ""
        self.pos = 0

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.bits):
            raise RLEError("RLE payload ends in the middle of a record")
        v = int(self.bits[self.pos : end], 2)
        self.pos = end
        return v


def rle_decode(rle: Sequence[int] | ArrayLike) -> NDArray[np.uint8]:
    """Decode Label Studio RLE to its flat value stream (``num`` values, uint8 for 8-bit words)."""
    arr = np.asarray(rle)
    if arr.ndim != 1 or (
        arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() > 255)
    ):
        raise RLEError("RLE must be a flat list of integers 0-255")
    r = _BitReader(arr.astype(np.uint8))
    num = r.read(32)
    word = r.read(5) + 1
    sizes = [r.read(4) + 1 for _ in range(4)]
    if word > 8:
        raise RLEError(f"unsupported RLE word size {word}")
    out = np.zeros(num, dtype=np.uint8)
    i = 0
    while i < num:
        is_run = r.read(1)
        n = r.read(sizes[r.read(2)]) + 1
        if i + n > num:
            raise RLEError(f"RLE record overruns the declared length {num}")
        if is_run:
            out[i : i + n] = r.read(word)
        else:
            for k in range(n):
                out[i + k] = r.read(word)
        i += n
    return out


def rle_to_mask(rle: Sequence[int] | ArrayLike, height: int, width: int) -> NDArray[np.uint8]:
    """Decode to an ``(H, W)`` uint8 mask: the alpha channel, as Label Studio renders it."""
    flat = rle_decode(rle)
    if flat.size != height * width * CHANNELS:
        expected = height * width * CHANNELS
        raise RLEError(f"RLE holds {flat.size} values, expected {height}x{width}x{CHANNELS} = {expected}")
    return flat.reshape(height, width, CHANNELS)[:, :, CHANNELS - 1].copy()
