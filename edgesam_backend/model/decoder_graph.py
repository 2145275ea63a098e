"""The one input/output contract of the exported decoder graphs (plain and reassociated).

:class:`DecoderGraph` holds the prompt encoder, the mask decoder and a frozen copy of the dense
positional encoding, and owns ``forward``: ``image_embeddings (1, 256, h, w)``, ``point_coords (B, N,
2)`` (x, y) model frame, ``point_labels (B, N)``, ``mask_input (B, 1, 4h, 4w)``, ``has_mask_input (B,)``
→ ``low_res_logits (B, 4, 4h, 4w)``, ``iou_predictions (B, 4)``, ``stability_scores (B, 4)``. A
subclass writes only :meth:`DecoderGraph.decode` (embedded points → logits and IoU); the point
embedding and the stability score (float32, as the graph has always written it) are computed here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.masks import MASK_THRESHOLD, STABILITY_OFFSET
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


def graph_stability_scores(low: torch.Tensor) -> torch.Tensor:
    """IoU of ``low (..., H, W)`` thresholded at ``MASK_THRESHOLD ± STABILITY_OFFSET`` → ``(...)``;
    counts summed in float32 (exact below 2**24 pixels), an empty union scores 0."""
    inter = (low > MASK_THRESHOLD + STABILITY_OFFSET).to(torch.float32).sum((-1, -2))
    union = (low > MASK_THRESHOLD - STABILITY_OFFSET).to(torch.float32).sum((-1, -2))
    return inter / union.clamp(min=1.0)


class DecoderGraph(nn.Module):
    """Base of the exported decoders: B prompts on one image, all 4 tokens and both scores."""

    def __init__(
        self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder, dense_pe: torch.Tensor
    ) -> None:
        """``dense_pe``: the positional encoding in the layout the subclass reads (not saved)."""
        super().__init__()
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("dense_pe", dense_pe, persistent=False)

    def decode(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, mask_input: torch.Tensor, has_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``embeddings (1, 256, h, w)``, the embedded points ``sparse (B, N, 256)``, ``mask_input (B, 1,
        4h, 4w)``, ``has_mask (B,)`` (1: use ``mask_input``) → ``low_res_logits (B, 4, 4h, 4w)`` and
        ``iou_predictions (B, 4)``."""
        raise NotImplementedError

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sparse = self.prompt_encoder.embed_points(point_coords, point_labels, pad=False)  # (B, N, 256)
        low, iou = self.decode(image_embeddings, sparse, mask_input, has_mask_input)
        return low, iou, graph_stability_scores(low)
