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
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import transforms
from .decode import Decoded, candidate_tokens, select_masks
from .masks import MASK_THRESHOLD, STABILITY_OFFSET
from .prompts import PromptError, check_mask_input, pack_prompt, prior_prompt
from .proposals import Proposals, decode_proposals
from .upscale import UPSCALE_CHUNK_BYTES, iter_upscaled

NUM_MASK_TOKENS = 4
#: A float32 array: every decoder input and output.
F32 = NDArray[np.float32]
#: What :meth:`BasePredictor._decode` returns: ``low_res_logits (B, 4, S/4, S/4)``, ``iou_predictions
#: (B, 4)``, ``stability_scores (B, 4)``.
DecodeOutputs = tuple[F32, F32, F32]
SCORE_KINDS = ("stability", "iou")


@dataclass(frozen=True)
class ImageEmbedding:
    """One encoded image.

    Attributes:
        embeddings: ``(1, 256, E, E)`` float32 image embeddings (``E = S / 16``: 64 at 1024).
        original_hw: ``(H, W)`` of the original image.
        input_hw: ``(h, w)`` after the longest-side-``S`` resize (before padding).
        proposals: region proposals (original frame) when the encoder has the RPN head, else None.
    """

    embeddings: NDArray[np.float32]
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    proposals: Proposals | None = None

    @property
    def image_size(self) -> int:
        """The model's input side ``S`` (``16 E`` for ``(1, 256, E, E)`` embeddings; 1024 official)."""
        return transforms.image_size_of_embeddings(self.embeddings)


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


class BasePredictor(ABC):
    """Shared logic; subclasses implement :meth:`_encode_tensor` and :meth:`_decode`."""

    #: Whether :meth:`_decode` accepts a mask input.
    supports_mask_input: bool = True
    #: The model's square input side ``S`` (low-res logits ``S/4``, embeddings ``S/16``).
    image_size: int = transforms.IMAGE_SIZE

    #: At most this many prompts per back-end decoder call: larger batches are split inside
    #: :meth:`predict_low_res` (outputs are identical), which bounds the decoder's working memory
    #: whatever batch a caller asks for. ``None``: no limit.
    max_decode_batch: int | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._embedding: ImageEmbedding | None = None

    # --- back-end hooks -------------------------------------------------------------------------
    @abstractmethod
    def _encode_tensor(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """``(1, 3, 1024, 1024)`` normalised, padded input → ``(1, 256, 64, 64)`` embeddings."""

    @abstractmethod
    def _decode(self, embeddings: F32, coords: F32, labels: F32, mask_input: F32 | None) -> DecodeOutputs:
        """``coords (B, N, 2)``, ``labels (B, N)`` (model frame), ``mask_input (B, 1, 256, 256)`` or None →
        ``low_res_logits (B, 4, 256, 256)``, ``iou_predictions (B, 4)``, ``stability_scores (B, 4)``."""

    def _encode_outputs(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        """All encoder outputs: ``image_embeddings`` and, with an RPN, ``proposal_logits (1, L)`` and
        ``proposal_ltrb (1, L, 4)``. Back ends with a region proposal head override this."""
        return {"image_embeddings": self._encode_tensor(x)}

    # --- images ---------------------------------------------------------------------------------
    def encode(self, image: NDArray[np.uint8]) -> ImageEmbedding:
        """Encode an ``(H, W, 3)`` uint8 RGB image (pure: does not touch the default embedding)."""
        x, input_hw = transforms.preprocess(image, self.image_size)
        out = self._encode_outputs(x)
        emb = np.ascontiguousarray(out["image_embeddings"], dtype=np.float32)
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        proposals = None
        if "proposal_logits" in out:
            proposals = decode_proposals(
                out["proposal_logits"],
                out["proposal_ltrb"],
                input_hw,
                original_hw,
                input_size=self.image_size,
            )
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
        mask = check_mask_input(mask_input, coords.shape[0], emb.image_size)
        if mask is not None and not self.supports_mask_input:
            raise PromptError(
                "this decoder has no mask input (official-format ONNX export); "
                "re-export with `edgesam export` for mask refinement"
            )
        step = self.max_decode_batch
        b = coords.shape[0]
        if not step or b <= step:
            return self._decode(emb.embeddings, coords, labels, mask)
        side = transforms.low_res_size(emb.image_size)  # the model's own low-res grid (S/4)
        low = np.empty((b, NUM_MASK_TOKENS, side, side), np.float32)
        iou = np.empty((b, NUM_MASK_TOKENS), np.float32)
        stab = np.empty((b, NUM_MASK_TOKENS), np.float32)
        for s in range(0, b, step):
            sl = slice(s, s + step)
            out = self._decode(emb.embeddings, coords[sl], labels[sl], None if mask is None else mask[sl])
            low[sl], iou[sl], stab[sl] = out
        return low, iou, stab

    def decode(
        self,
        coords: NDArray[np.float32],
        labels: NDArray[np.float32],
        mask_input: NDArray[np.float32] | None = None,
        embedding: ImageEmbedding | None = None,
        *,
        select: str = "all",
        num_multimask_outputs: int | None = None,
        stability_offset: float = STABILITY_OFFSET,
    ) -> Decoded:
        """Batched decode of B prompts (model frame, see :func:`pack_prompt`) with token selection.

        ``select`` / ``num_multimask_outputs``: see :mod:`edgesam_backend.runtime.decode` ("single",
        "stability", "iou" — best of tokens 1-3 unless ``num_multimask_outputs`` says otherwise — or
        "all"); ``stability_offset`` other than 1.0 recomputes the stability scores before choosing.
        Nothing is upscaled: pass the kept logits to :meth:`iter_masks` / :meth:`upscale_masks`.
        """
        candidate_tokens(select, num_multimask_outputs)  # reject bad arguments before decoding
        low, iou, stab = self.predict_low_res(coords, labels, mask_input, embedding)
        return select_masks(low, iou, stab, select, num_multimask_outputs, stability_offset)

    def iter_masks(
        self,
        low_res: NDArray[np.float32],
        embedding: ImageEmbedding | None = None,
        chunk_bytes: int = UPSCALE_CHUNK_BYTES,
    ) -> Iterator[NDArray[np.bool_]]:
        """Chosen low-res logits ``(K, 256, 256)`` → original-frame bool masks in consecutive chunks
        ``(k, H, W)`` of at most ``chunk_bytes`` (bit-identical to :meth:`predict`'s masks)."""
        emb = embedding or self.embedding
        return iter_upscaled(
            np.asarray(low_res, dtype=np.float32), emb.input_hw, emb.original_hw, chunk_bytes
        )

    def upscale_masks(self, low_res: NDArray[np.float32], embedding: ImageEmbedding | None = None) -> NDArray:
        """Chosen low-res logits ``(K, 256, 256)`` (K >= 1) → ``(K, H, W)`` bool masks, original frame."""
        return np.concatenate(list(self.iter_masks(low_res, embedding)))

    def _prompt(
        self,
        point_coords: ArrayLike | None,
        point_labels: ArrayLike | None,
        box: ArrayLike | None,
        emb: ImageEmbedding,
        granularity_prior: bool,
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], bool]:
        """Model-frame ``coords (1, M, 2)``, ``labels (1, M)`` and whether the granularity prior applied."""
        if granularity_prior and box is None and point_coords is not None:
            if emb.proposals is None:
                raise PromptError("granularity_prior needs an encoder with the region proposal head")
            return (
                *prior_prompt(point_coords, point_labels, emb.proposals, emb.original_hw, emb.image_size),
                True,
            )
        return (*pack_prompt(point_coords, point_labels, box, emb.original_hw, emb.image_size), False)

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
        coords, labels, prior = self._prompt(point_coords, point_labels, box, emb, granularity_prior)
        d = self.decode(
            coords, labels, mask_input, emb, num_multimask_outputs=1 if prior else num_multimask_outputs
        )
        low = d.low_res_logits[0]
        logits = transforms.upscale_logits(low, emb.input_hw, emb.original_hw)
        return Prediction(
            masks=logits > MASK_THRESHOLD,
            iou_predictions=d.iou_predictions[0],
            stability_scores=d.stability_scores[0],
            low_res_logits=np.ascontiguousarray(low),
            logits=logits if return_logits else None,
        )

    def predict_selected(
        self,
        point_coords: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        *,
        select: str = "stability",
        num_multimask_outputs: int | None = None,
        embedding: ImageEmbedding | None = None,
        granularity_prior: bool = False,
        stability_offset: float = STABILITY_OFFSET,
    ) -> Prediction:
        """:meth:`predict` with token selection: one prompt (original frame, as :meth:`predict`), only
        the kept masks are upscaled. ``select="stability"`` equals ``predict(...)`` at index
        ``best("stability")``, bit for bit; ``logits`` is never returned. With the granularity prior
        the candidates are token 0 only (as in :meth:`predict`)."""
        emb = embedding or self.embedding
        coords, labels, prior = self._prompt(point_coords, point_labels, box, emb, granularity_prior)
        if prior:
            select, num_multimask_outputs = ("all" if select == "all" else "single"), 1
        d = self.decode(
            coords,
            labels,
            mask_input,
            emb,
            select=select,
            num_multimask_outputs=num_multimask_outputs,
            stability_offset=stability_offset,
        )
        low = np.ascontiguousarray(d.low_res_logits[0])
        return Prediction(
            masks=self.upscale_masks(low, emb),
            iou_predictions=d.iou_predictions[0],
            stability_scores=d.stability_scores[0],
            low_res_logits=low,
        )


__all__ = [
    "BasePredictor",
    "Decoded",
    "ImageEmbedding",
    "Prediction",
]
