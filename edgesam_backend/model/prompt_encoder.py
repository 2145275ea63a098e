"""SAM's prompt encoder with EdgeSAM's two additions (label -2 and box labels).

Coordinates are (x, y) pixels in the 1024-resized, padded model input frame.

Point label codes (used by the PyTorch model and every ONNX decoder alike):
``-2`` token set to zeros (EdgeSAM; a dummy point), ``-1`` padding / not a point,
``0`` negative point, ``1`` positive point, ``2`` box top-left corner, ``3`` box bottom-right corner.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised coordinates (fixed Gaussian matrix, key
    ``positional_encoding_gaussian_matrix`` of shape ``(2, num_pos_feats)``)."""

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        """``coords (..., 2)`` in [0, 1] → ``(..., 2*num_pos_feats)`` = [sin, cos]."""
        coords = 2 * coords - 1
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense PE of an ``(h, w)`` grid at pixel centres → ``(C, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=torch.float32)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """PE of unnormalised ``(B, N, 2)`` (x, y) coordinates in an ``image_size = (H, W)`` frame."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        return self._pe_encoding(coords.to(torch.float))


class PromptEncoder(nn.Module):
    """Encodes points, boxes and low-res masks into sparse ``(B, N, 256)`` and dense
    ``(B, 256, 64, 64)`` embeddings."""

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (64, 64),
        input_image_size: tuple[int, int] = (1024, 1024),
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = input_image_size
        self.image_embedding_size = image_embedding_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.num_point_embeddings = 4  # pos/neg point + 2 box corners
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Dense positional encoding of the embedding grid, ``(1, 256, 64, 64)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """``points (B, N, 2)`` model-frame (x, y), ``labels (B, N)`` → ``(B, N[+1], 256)``.

        With ``pad`` a (0, 0) point labelled -1 is appended (SAM does this when there is no box).
        Labels 2/3 (box corners passed as points, as in the ONNX decoder) add ``point_embeddings[2/3]``.
        """
        points = points + 0.5  # pixel centre
        if pad:
            padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device, dtype=points.dtype)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        pe = self.pe_layer.forward_with_coords(points, self.input_image_size)
        lab = labels[..., None]
        pe = torch.where(lab == -1, self.not_a_point_embed.weight, pe)
        for code in range(self.num_point_embeddings):
            pe = pe + (lab == code).to(pe.dtype) * self.point_embeddings[code].weight
        return torch.where(lab == -2, torch.zeros_like(pe), pe)

    def embed_boxes(self, boxes: torch.Tensor, box_labels: torch.Tensor | None = None) -> torch.Tensor:
        """``boxes (B, 4)`` XYXY model frame → two corner tokens ``(B, 2, 256)``.

        ``box_labels (B,)`` == -1 turns both tokens into ``not_a_point_embed`` (EdgeSAM addition).
        """
        boxes = boxes + 0.5
        coords = boxes.reshape(-1, 2, 2)
        corner = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner = corner + torch.stack(
            [self.point_embeddings[2].weight[0], self.point_embeddings[3].weight[0]]
        )
        if box_labels is not None:
            invalid = (box_labels.reshape(-1) == -1)[:, None, None]
            corner = torch.where(invalid, self.not_a_point_embed.weight, corner)
        return corner

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """Low-res mask logits ``(B, 1, 256, 256)`` → ``(B, 256, 64, 64)``."""
        return self.mask_downscaling(masks)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
        box_labels: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(sparse (B, N, 256), dense (B, 256, 64, 64))``; sparse tokens are points then boxes."""
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = 1
        device = self.point_embeddings[0].weight.device
        sparse = torch.empty((bs, 0, self.embed_dim), device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self.embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self.embed_boxes(boxes, box_labels)], dim=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                bs, -1, self.image_embedding_size[0], self.image_embedding_size[1]
            )
        return sparse, dense
