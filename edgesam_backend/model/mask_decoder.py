"""SAM's mask decoder with EdgeSAM's ``num_multimask_outputs`` token selection.

Inputs: image embeddings ``(1 or B, 256, 64, 64)``, dense PE ``(1, 256, 64, 64)``, sparse prompt
tokens ``(B, N, 256)``, dense prompt embeddings ``(B, 256, 64, 64)``. Outputs low-res mask logits
``(B, K, 256, 256)`` and IoU predictions ``(B, K)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.tokens import select_tokens
from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Two-way transformer + upscaling + per-token hypernetworks + IoU head."""

    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer if transformer is not None else TwoWayTransformer()
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All 4 tokens: ``(B, 4, 256, 256)`` logits and ``(B, 4)`` IoU predictions."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(b, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        # One image's embeddings (1, C, H, W) broadcast over the B prompts; the dense PE broadcasts
        # inside the transformer. Same values as SAM's repeat_interleave, and export-friendly.
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape

        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, c2, h2, w2 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c2, h2 * w2)).reshape(b, -1, h2, w2)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        num_multimask_outputs: int = 3,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, 256, 256)`` logits and ``(B, K)`` IoU for K = ``num_multimask_outputs`` (1, 3, 4)."""
        sl = select_tokens(num_multimask_outputs)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        return masks[:, sl], iou_pred[:, sl]
