"""Iterative refinement: a click that extends the previous clicks on the same region is decoded with the
previous answer's low-res logits as mask input (what SAM and EdgeSAM were trained for).

Label Studio sends every keypoint of the region with each click. :class:`ClickMemory` remembers, per
served version and image, the chosen low-res logits ``(256, 256)`` (model frame) of recent answers
under their prompt (points in pixels of the decoded image, labels, box); a request with points
``P`` looks for an answer to ``P`` minus one point (any one: the order of the regions in the context is
not guaranteed) with the same box. Bounded by entries (LRU). Off with ``EDGESAM_REFINE_WITH_MASK=false``
and for decoders without mask input (the official ONNX export).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
from numpy.typing import NDArray


def _points_key(coords: NDArray[np.float64] | None, labels: NDArray[np.int64] | None) -> frozenset:
    if coords is None or labels is None:
        return frozenset()
    return frozenset(
        (round(float(x), 2), round(float(y), 2), int(lab)) for (x, y), lab in zip(coords, labels, strict=True)
    )


def _box_key(box: NDArray[np.float64] | None) -> tuple[float, ...] | None:
    return None if box is None else tuple(round(float(v), 2) for v in np.asarray(box).reshape(-1))


class ClickMemory:
    """Recent interactive answers' low-res logits, keyed by ``(scope, points, box)``; thread-safe.

    ``scope`` names the model version and the image (e.g. ``(model_version, image identity)``).
    """

    def __init__(self, max_items: int = 128) -> None:
        self.max_items = max_items
        self._items: OrderedDict[
            tuple[Hashable, frozenset, tuple[float, ...] | None], NDArray[np.float32]
        ] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def put(
        self,
        scope: Hashable,
        coords: NDArray[np.float64] | None,
        labels: NDArray[np.int64] | None,
        box: NDArray[np.float64] | None,
        low_res: NDArray[np.float32],
    ) -> None:
        key = (scope, _points_key(coords, labels), _box_key(box))
        with self._lock:
            self._items[key] = np.ascontiguousarray(low_res, dtype=np.float32)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def previous(
        self,
        scope: Hashable,
        coords: NDArray[np.float64] | None,
        labels: NDArray[np.int64] | None,
        box: NDArray[np.float64] | None,
    ) -> NDArray[np.float32] | None:
        """Logits of an earlier answer whose points are these minus one (same box), or None."""
        pts = _points_key(coords, labels)
        if len(pts) < 1 or (len(pts) == 1 and box is None):
            return None
        bk = _box_key(box)
        with self._lock:
            for p in pts:
                got = self._items.get((scope, pts - {p}, bk))
                if got is not None:
                    self.hits += 1
                    return got[None]  # (1, 256, 256): the mask_input of one prompt
        return None
