"""PyTorch predictor with the same API as the onnxruntime one (``runtime.base.BasePredictor``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from ..runtime.base import F32, BasePredictor, DecodeOutputs
from .checkpoint import load_edge_sam
from .edge_sam import EdgeSam, stability_score


class TorchPredictor(BasePredictor):
    """EdgeSAM in PyTorch eager mode.

    Args:
        model: an :class:`EdgeSam`, or a checkpoint path / loaded state_dict.
        device: torch device.
        upsample_mode: used when building from a checkpoint (``"bicubic"`` as trained).
    """

    def __init__(
        self,
        model: EdgeSam | str | os.PathLike[str] | Mapping[str, Any],
        device: str | torch.device = "cpu",
        upsample_mode: str = "bicubic",
    ) -> None:
        super().__init__()
        if not isinstance(model, EdgeSam):
            model = load_edge_sam(model, upsample_mode=upsample_mode, image_size=None)  # checkpoint's S
        self.model = model.to(device).eval()
        self.image_size = model.image_size
        self.device = torch.device(device)

    @torch.inference_mode()
    def _encode_tensor(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        return self.model.image_encoder(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    @torch.inference_mode()
    def _encode_outputs(self, x: NDArray[np.float32]) -> dict[str, NDArray[np.float32]]:
        rpn = self.model.rpn_head
        if rpn is None:
            return super()._encode_outputs(x)
        emb, stages = self.model.image_encoder.forward_with_stages(torch.from_numpy(x).to(self.device))
        logits, ltrb = rpn.flatten(*rpn(stages))
        return {
            "image_embeddings": emb.float().cpu().numpy(),
            "proposal_logits": logits.float().cpu().numpy(),
            "proposal_ltrb": ltrb.float().cpu().numpy(),
        }

    @torch.inference_mode()
    def _decode(self, embeddings: F32, coords: F32, labels: F32, mask_input: F32 | None) -> DecodeOutputs:
        m = self.model
        pe = m.prompt_encoder
        emb = torch.from_numpy(embeddings).to(self.device)
        c = torch.from_numpy(coords).to(self.device)
        lab = torch.from_numpy(labels).to(self.device)
        sparse = pe.embed_points(c, lab, pad=False)
        if mask_input is not None:
            dense = pe.embed_masks(torch.from_numpy(mask_input).to(self.device))
        else:
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                c.shape[0], -1, *pe.image_embedding_size
            )
        low, iou = m.mask_decoder.predict_masks(emb, pe.get_dense_pe(), sparse, dense)
        stab = stability_score(low)
        return low.float().cpu().numpy(), iou.float().cpu().numpy(), stab.float().cpu().numpy()
