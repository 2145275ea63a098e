"""Predictor API shared by the onnxruntime and PyTorch back ends (numpy in, numpy out).

In the spirit of SAM's ``SamPredictor``: :meth:`BasePredictor.set_image` encodes an image once,
:meth:`BasePredictor.predict` decodes prompts against the cached embedding. Prompts are given in the
*original* image frame (pixels, (x, y)); see :mod:`edgesam_backend.runtime.transforms`.

Thread safety: an :class:`ImageEmbedding` is immutable; ``predict(..., embedding=emb)`` may be called
from many threads at once. ``set_image`` only swaps the default embedding under a lock.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import transforms
from .masks import MASK_THRESHOLD, stability_score
from .proposals import Proposals, box_for_point, decode_proposals
from .tokens import select_tokens

#: Labels a user may give for points: 1 positive, 0 negative, -1 padding, -2 dummy (zero token).
POINT_LABELS = (-2, -1, 0, 1)
#: Labels of the two box corners when a box is passed to the decoder as points.
BOX_LABELS = (2.0, 3.0)
NUM_MASK_TOKENS = 4
SCORE_KINDS = ("stability", "iou")


class PromptError(ValueError):
    """A prompt is malformed (shapes, labels, values)."""


@dataclass(frozen=True)
class ImageEmbedding:
    """One encoded image.

    Attributes:
        embeddings: ``(1, 256, 64, 64)`` float32 image embeddings.
        original_hw: ``(H, W)`` of the original image.
        input_hw: ``(h, w)`` after the longest-side-1024 resize (before padding).
        proposals: region proposals (original frame) when the encoder has the RPN head, else None.
    """

    embeddings: NDArray[np.float32]
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    proposals: Proposals | None = None


@dataclass
class Prediction:
    """Result of one prompt; K = ``num_multimask_outputs``.

    Attributes:
        masks: ``(K, H, W)`` bool, original frame (``logits > 0``).
        iou_predictions: ``(K,)`` float32 IoU-head outputs (EdgeSAM did not distil this head).
        stability_scores: ``(K,)`` float32 stability scores of the low-res logits (offset 1.0).
        low_res_logits: ``(K, 256, 256)`` float32, model frame; feed one back as ``mask_input``.
        logits: ``(K, H, W)`` float32 upscaled logits before thresholding (only with ``return_logits``).
    """

    masks: NDArray[np.bool_]
    iou_predictions: NDArray[np.float32]
    stability_scores: NDArray[np.float32]
    low_res_logits: NDArray[np.float32]
    logits: NDArray[np.float32] | None = None

    def scores(self, kind: str = "stability") -> NDArray[np.float32]:
        """The quality score selected by ``kind`` (``"stability"`` or ``"iou"``)."""
        if kind not in SCORE_KINDS:
            raise ValueError(f"score kind must be one of {SCORE_KINDS}, got {kind!r}")
        return self.stability_scores if kind == "stability" else self.iou_predictions

    def best(self, kind: str = "stability") -> int:
        """Index of the highest-scoring mask."""
        return int(np.argmax(self.scores(kind)))


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


def pack_prompt(
    point_coords: ArrayLike | None,
    point_labels: ArrayLike | None,
    box: ArrayLike | None,
    original_hw: tuple[int, int],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Build the decoder's point arrays in the model frame.

    Args:
        point_coords: ``(N, 2)`` (x, y) original-frame pixels, or ``None``.
        point_labels: ``(N,)`` labels in :data:`POINT_LABELS`.
        box: ``(4,)`` XYXY original-frame pixels, or ``None``.
    Returns:
        ``coords (1, M, 2)`` float32 model frame and ``labels (1, M)`` float32: the points, then the
        box as two corners labelled 2/3; without a box a (0, 0) point labelled -1 is appended, as
        SAM's prompt encoder does.
    """
    coords, labels = _as_points(point_coords, point_labels)
    parts_c = [transforms.apply_coords(coords, original_hw)] if len(coords) else []
    parts_l = [labels.astype(np.float32)] if len(coords) else []
    if box is not None:
        b = np.asarray(box, dtype=np.float64).reshape(-1)
        if b.shape != (4,) or not np.isfinite(b).all():
            raise PromptError(f"box must be 4 finite numbers x0, y0, x1, y1; got {np.asarray(box).tolist()}")
        if b[2] < b[0] or b[3] < b[1]:
            raise PromptError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1; got {b.tolist()}")
        parts_c.append(transforms.apply_boxes(b, original_hw).reshape(2, 2))
        parts_l.append(np.array(BOX_LABELS, dtype=np.float32))
    elif not len(coords):
        raise PromptError("a prompt needs at least one point or a box")
    else:
        parts_c.append(np.zeros((1, 2), dtype=np.float32))
        parts_l.append(np.array([-1.0], dtype=np.float32))
    c = np.concatenate(parts_c, axis=0).astype(np.float32)[None]
    lab = np.concatenate(parts_l, axis=0).astype(np.float32)[None]
    return c, lab


def check_mask_input(mask_input: ArrayLike | None, batch: int = 1) -> NDArray[np.float32] | None:
    """Validate low-res mask logits: ``(256, 256)``, ``(1, 256, 256)`` or ``(B, 1, 256, 256)``."""
    if mask_input is None:
        return None
    m = np.asarray(mask_input, dtype=np.float32)
    size = transforms.LOW_RES_SIZE
    if m.shape[-2:] != (size, size) or m.ndim > 4 or m.size != batch * size * size:
        raise PromptError(f"mask_input must be {size}x{size} low-res logits (one per prompt), got {m.shape}")
    if not np.isfinite(m).all():
        raise PromptError("mask_input must be finite")
    return m.reshape(batch, 1, size, size)


class BasePredictor(ABC):
    """Shared logic; subclasses implement :meth:`_encode_tensor` and :meth:`_decode`."""

    #: Whether :meth:`_decode` accepts a mask input.
    supports_mask_input: bool = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._embedding: ImageEmbedding | None = None

    # --- back-end hooks -------------------------------------------------------------------------
    @abstractmethod
    def _encode_tensor(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(1, 3, 1024, 1024)`` normalised, padded input → ``(1, 256, 64, 64)`` embeddings."""

    @abstractmethod
    def _decode(
        self,
        embeddings: NDArray[np.float32],
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """``coords (B, N, 2)``, ``labels (B, N)`` (model frame), ``mask_input (B, 1, 256, 256)`` or None →
        ``low_res_logits (B, 4, 256, 256)``, ``iou_predictions (B, 4)``, ``stability_scores (B, 4)``."""

    def _encode_outputs(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """All encoder outputs: ``image_embeddings`` and, with an RPN, ``proposal_logits (1, L)`` and
        ``proposal_ltrb (1, L, 4)``. Back ends with a region proposal head override this."""
        return {"image_embeddings": self._encode_tensor(x)}

    # --- images ---------------------------------------------------------------------------------
    def encode(self, image: NDArray[np.uint8]) -> ImageEmbedding:
        """Encode an ``(H, W, 3)`` uint8 RGB image (pure: does not touch the default embedding)."""
        x, input_hw = transforms.preprocess(image)
        out = self._encode_outputs(x)
        emb = np.ascontiguousarray(out["image_embeddings"], dtype=np.float32)
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        proposals = None
        if "proposal_logits" in out:
            proposals = decode_proposals(out["proposal_logits"], out["proposal_ltrb"], input_hw, original_hw)
        return ImageEmbedding(emb, original_hw, input_hw, proposals)

    def set_image(self, image: NDArray[np.uint8]) -> ImageEmbedding:
        """Encode ``image`` and make it the default for :meth:`predict`."""
        emb = self.encode(image)
        self.set_embedding(emb)
        return emb

    def set_embedding(self, embedding: ImageEmbedding) -> None:
        with self._lock:
            self._embedding = embedding

    @property
    def embedding(self) -> ImageEmbedding:
        emb = self._embedding
        if emb is None:
            raise RuntimeError("no image set: call set_image(image) first (or pass embedding=)")
        return emb

    # --- prompts --------------------------------------------------------------------------------
    def predict_low_res(
        self,
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None = None,
        embedding: ImageEmbedding | None = None,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
        """Batched decode of B prompts already in the model frame (see :func:`pack_prompt`); all 4 tokens.

        Returns ``low_res_logits (B, 4, 256, 256)``, ``iou_predictions (B, 4)``, ``stability (B, 4)``.
        """
        emb = embedding or self.embedding
        coords = np.ascontiguousarray(coords, dtype=np.float32)
        labels = np.ascontiguousarray(labels, dtype=np.float32)
        if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2]:
            raise PromptError(
                f"expected coords (B, N, 2) and labels (B, N), got {coords.shape}, {labels.shape}"
            )
        mask = check_mask_input(mask_input, coords.shape[0])
        if mask is not None and not self.supports_mask_input:
            raise PromptError(
                "this decoder has no mask input (official-format ONNX export); "
                "re-export with `edgesam export` for mask refinement"
            )
        return self._decode(emb.embeddings, coords, labels, mask)

    def predict(
        self,
        point_coords: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        num_multimask_outputs: int = 3,
        return_logits: bool = False,
        embedding: ImageEmbedding | None = None,
        granularity_prior: bool = False,
    ) -> Prediction:
        """Predict masks for one prompt in the original image frame.

        Args:
            point_coords: ``(N, 2)`` (x, y) pixels; ``point_labels``: ``(N,)``, 1 positive / 0 negative.
            box: ``(4,)`` XYXY pixels.
            mask_input: ``(1, 256, 256)`` low-res logits of an earlier prediction (refinement).
            num_multimask_outputs: 1 (token 0), 3 (tokens 1-3) or 4 (tokens 0-3).
            return_logits: also return the upscaled logits.
            embedding: an :class:`ImageEmbedding` to use instead of the one from :meth:`set_image`.
            granularity_prior: for a points-only prompt on an embedding with region proposals, add
                the proposal box chosen for the last positive point (EdgeSAM's rule, see
                :func:`~edgesam_backend.runtime.proposals.box_for_point`) or, when no proposal contains
                it, two not-a-point box tokens; the result is then the single-mask token (K=1).
        """
        emb = embedding or self.embedding
        if granularity_prior and box is None and point_coords is not None:
            if emb.proposals is None:
                raise PromptError("granularity_prior needs an encoder with the region proposal head")
            coords, labels = self._prior_prompt(point_coords, point_labels, emb)
            num_multimask_outputs = 1
        else:
            coords, labels = pack_prompt(point_coords, point_labels, box, emb.original_hw)
        sl = select_tokens(num_multimask_outputs)
        low, iou, stab = self.predict_low_res(coords, labels, mask_input, emb)
        low, iou, stab = low[0, sl], iou[0, sl], stab[0, sl]
        logits = transforms.upscale_logits(low, emb.input_hw, emb.original_hw)
        return Prediction(
            masks=logits > MASK_THRESHOLD,
            iou_predictions=iou.astype(np.float32),
            stability_scores=stab.astype(np.float32),
            low_res_logits=np.ascontiguousarray(low),
            logits=logits if return_logits else None,
        )

    @staticmethod
    def _prior_prompt(
        point_coords: ArrayLike, point_labels: ArrayLike | None, emb: ImageEmbedding
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        coords, labels = _as_points(point_coords, point_labels)
        positives = np.flatnonzero(labels == 1)
        if positives.size == 0:
            return pack_prompt(coords, labels, None, emb.original_hw)
        assert emb.proposals is not None
        box, _ = box_for_point(emb.proposals, coords[positives[-1]])
        if box is not None:
            return pack_prompt(coords, labels, box, emb.original_hw)
        c, lab = pack_prompt(coords, labels, None, emb.original_hw)  # points + padding point
        # box-label extension: two not-a-point tokens stand in for the missing box
        c = np.concatenate([c[:, :-1], np.zeros((1, 2, 2), np.float32)], axis=1)
        lab = np.concatenate([lab[:, :-1], np.full((1, 2), -1.0, np.float32)], axis=1)
        return c, lab


__all__ = [
    "BasePredictor",
    "ImageEmbedding",
    "Prediction",
    "PromptError",
    "check_mask_input",
    "pack_prompt",
    "stability_score",
]
