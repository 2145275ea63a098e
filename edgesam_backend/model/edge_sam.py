"""The EdgeSAM model: RepViT-M1 fuse encoder + SAM prompt encoder + SAM mask decoder.

State-dict keys are ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` exactly as in the
official ``edge_sam.pth`` / ``edge_sam_3x.pth`` (821 entries). Optional extra heads (the region
proposal module) live under their own prefix and are not part of the official layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.masks import MASK_THRESHOLD, STABILITY_OFFSET
from ..runtime.transforms import IMAGE_SIZE, PIXEL_MEAN, PIXEL_STD
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .repvit import RepViT
from .rpn import RegionProposalHead
from .transformer import TwoWayTransformer

EMBED_SIZE = 64


class EdgeSam(nn.Module):
    """EdgeSAM. ``image_encoder`` maps ``(B,3,1024,1024)`` normalised, padded input to
    ``(B,256,64,64)``; ``prompt_encoder`` + ``mask_decoder`` turn prompts into low-res logits."""

    mask_threshold: float = MASK_THRESHOLD
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        rpn_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        #: Optional region proposal module (keys ``rpn_head.*``; absent from the official checkpoints).
        self.rpn_head = rpn_head
        self.register_buffer(
            "pixel_mean", torch.from_numpy(PIXEL_MEAN.copy()).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.from_numpy(PIXEL_STD.copy()).view(-1, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        """Side of the square model input this model is set for (the prompt encoder's frame)."""
        return int(self.prompt_encoder.input_image_size[0])

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device


def stability_score(
    logits: torch.Tensor, mask_threshold: float = MASK_THRESHOLD, offset: float = STABILITY_OFFSET
) -> torch.Tensor:
    """IoU between the masks thresholded at ``t + offset`` and ``t - offset``; ``(..., H, W)`` → ``(...)``.

    Counts are integers, the division is float32, as in the official code; an empty union scores 0.
    """
    inter = (logits > (mask_threshold + offset)).sum((-1, -2), dtype=torch.int64)
    union = (logits > (mask_threshold - offset)).sum((-1, -2), dtype=torch.int64)
    return inter.to(torch.float32) / union.clamp(min=1).to(torch.float32)


def build_edge_sam(
    upsample_mode: str = "bicubic", with_rpn: bool = False, image_size: int = IMAGE_SIZE
) -> EdgeSam:
    """Build an (untrained) EdgeSAM in eval mode, optionally with the region proposal head, for a
    square ``image_size`` input (embedding ``image_size/16``, low-res masks ``image_size/4``; the
    weights do not depend on it). Load weights with :func:`edgesam_backend.model.checkpoint.load_edge_sam`."""
    embed = image_size // (IMAGE_SIZE // EMBED_SIZE)
    model = EdgeSam(
        image_encoder=RepViT(upsample_mode=upsample_mode),
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(embed, embed),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=256,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        rpn_head=RegionProposalHead() if with_rpn else None,
    )
    return model.eval()
