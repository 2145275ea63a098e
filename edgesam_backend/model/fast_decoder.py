"""A reassociated EdgeSAM mask decoder for export: same function as ``MaskDecoder``, less work.

Same inputs and outputs as the plain decoder wrapper of the ONNX export (``image_embeddings (1, 256,
64, 64)``, ``point_coords (B, N, 2)`` model-frame (x, y), ``point_labels (B, N)``, ``mask_input (B, 1,
256, 256)``, ``has_mask_input (B,)`` → ``low_res_logits (B, 4, 256, 256)``, ``iou_predictions (B, 4)``,
``stability_scores (B, 4)``); it reads the weights of the given ``PromptEncoder``/``MaskDecoder``.

What changes (``T`` = 5 + N tokens, ``I`` = 4,096 image tokens of width 256, 8 heads):

* Image side of block 0. The image tokens are ``x_b = e + dense_b`` with ``dense_b`` either the
  constant ``no_mask_embed`` or ``W3 h_b + b3`` where ``h_b (I, 16)`` is the 16-channel map before the
  last 1x1 conv of the mask downscaling. So every projection of ``x_b`` is a per-image projection of
  ``e`` (computed once per call, shapes independent of B) plus a rank-16 correction ``h_b (W W3)ᵀ``
  plus a row constant. Constants along the softmax axis cancel and are dropped.
* Token→image attention (T queries over I keys): ``q·(W_k y)ᵀ = (W_kᵀ q)·yᵀ`` and
  ``softmax(·) (y W_vᵀ + b_v) = (softmax(·) y) W_vᵀ + b_v``: no ``(I, 256)×(256, 128)`` projection per
  prompt, ``8T·256·I`` MACs instead of ``2·128·256·I``.
* Image→token attention (I queries over T keys): ``(y W_qᵀ + b_q)·k_hᵀ = y·(W_q,hᵀ k_hᵀ) + b_q,h·k_hᵀ``
  and the output projection is folded into the token values (``v_h W_o,hᵀ``, ``(T, 256)`` per head).
* Output upscaling: both 2x2/stride-2 transposed convolutions are per-pixel matrix products (no
  overlap), done on the token-major ``(B, I, 256)`` layout with one final pixel rearrangement of the
  4 mask channels instead of two of the 256/64 feature channels.

The reassociation pays while ``8T < 128`` (N ≤ 10 prompt points), the usual case; more points stay
exact, only dearer. The rest of the per-prompt work (LayerNorms, the MLP on tokens, the upscaling)
is unchanged arithmetic.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .decoder_graph import DecoderGraph
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import Attention, TwoWayAttentionBlock

_HEADS = 8


def _heads(x: torch.Tensor, n: int = _HEADS) -> torch.Tensor:
    """``(B, T, C)`` → ``(B, n, T, C/n)``."""
    b, t, c = x.shape
    return x.reshape(b, t, n, c // n).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """``(B, n, T, d)`` → ``(B, T, n·d)``."""
    b, n, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, n * d)


def _w_heads(lin: nn.Linear) -> torch.Tensor:
    """Projection weight ``(n·d, 256)`` split per head → ``(n, d, 256)``."""
    return lin.weight.reshape(_HEADS, -1, lin.weight.shape[1])


def _token_attention(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain attention among the T tokens, ``(B, T, 256)`` each (cheap; as :class:`Attention`)."""
    return attn(q, k, v)


def _token_to_image(attn: Attention, q: torch.Tensor, kp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Token→image attention with the image projections reassociated onto the tokens.

    ``q (B, T, 256)`` token queries (+PE), ``kp (B, I, 256)`` image keys (+PE), ``y (B, I, 256)``
    image values; returns ``(B, T, 256)``, equal to ``attn(q, kp, y)``.
    """
    b, t, _ = q.shape
    qh = _heads(attn.q_proj(q))  # (B, 8, T, d)
    d = qh.shape[-1]
    qk = (qh @ _w_heads(attn.k_proj)).reshape(b, _HEADS * t, -1)  # (B, 8T, 256); q·b_k cancels
    p = torch.softmax((qk @ kp.transpose(1, 2)) / d**0.5, dim=-1)  # (B, 8T, I)
    py = (p @ y).reshape(b, _HEADS, t, -1)  # (B, 8, T, 256)
    out = py @ _w_heads(attn.v_proj).transpose(1, 2)  # (B, 8, T, d)
    return attn.out_proj(_merge(out) + attn.v_proj.bias)


def _image_to_token(
    attn: Attention, kp: torch.Tensor, k_tok: torch.Tensor, v_tok: torch.Tensor
) -> torch.Tensor:
    """Image→token attention, queries ``kp (B, I, 256)`` (+PE) over ``k_tok``/``v_tok (B, T, 256)``.

    Returns the output projection ``(B, I, 256)``, equal to ``attn(kp, k_tok, v_tok)``.
    """
    b, t, _ = k_tok.shape
    kh = _heads(attn.k_proj(k_tok))  # (B, 8, T, d)
    d = kh.shape[-1]
    wq = _w_heads(attn.q_proj)  # (8, d, 256)
    m = (wq.transpose(1, 2) @ kh.transpose(2, 3)).transpose(1, 2).reshape(b, -1, _HEADS * t)  # (B, 256, 8T)
    bias = (attn.q_proj.bias.reshape(_HEADS, 1, d) @ kh.transpose(2, 3)).reshape(b, 1, _HEADS * t)
    s = (kp @ m + bias) / d**0.5  # (B, I, 8T)
    p = torch.softmax(s.reshape(b, -1, _HEADS, t), dim=-1).reshape(b, -1, _HEADS * t)
    return p @ _folded_values(attn, v_tok)  # (B, I, 256)


def _folded_values(attn: Attention, v_tok: torch.Tensor) -> torch.Tensor:
    """Token values with the output projection folded in: ``(B, 8T, 256)``, row ``(h, t)`` is
    ``v_h[t] W_o,hᵀ + b_o / 8`` (each head's softmax weights sum to 1, so the bias comes out whole)."""
    b, t, _ = v_tok.shape
    d = attn.internal_dim // _HEADS
    vw = _heads(attn.v_proj(v_tok)) @ attn.out_proj.weight.reshape(-1, _HEADS, d).permute(1, 2, 0)
    return vw.reshape(b, _HEADS * t, -1) + attn.out_proj.bias / _HEADS


def _ln(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


class FastDecoderOnnxModel(DecoderGraph):
    """Prompt encoder + reassociated mask decoder for B prompts on one image (see module docstring)."""

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        tr = mask_decoder.transformer
        if tr.depth < 1 or tr.num_heads != _HEADS or mask_decoder.transformer_dim != 256:
            raise ValueError("the fast decoder expects SAM's two-way transformer (8 heads, dim 256)")
        pe = prompt_encoder.get_dense_pe().detach().clone()  # (1, 256, 64, 64)
        super().__init__(prompt_encoder, mask_decoder, pe.flatten(2).transpose(1, 2))  # (1, I, 256)

    def _block0(
        self,
        blk: TwoWayAttentionBlock,
        tok: torch.Tensor,
        e: torch.Tensor,
        h: torch.Tensor,
        has: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """First block, image side ``x_b = e + dense_b`` kept factored.

        ``tok (B, T, 256)``, ``e (1, I, 256)`` embeddings, ``h (B, I, 16)`` mask features, ``has (B, 1, 1)``.
        Returns tokens ``(B, T, 256)`` and image tokens ``(B, I, 256)``.
        """
        pe_enc = self.prompt_encoder
        last = pe_enc.mask_downscaling[-1]
        w3, b3 = last.weight.reshape(256, -1), last.bias  # (256, 16), (256,)
        nm = pe_enc.no_mask_embed.weight  # (1, 256)
        base = has * b3 + (1 - has) * nm  # (B, 1, 256): dense_b's constant part
        b, t, _ = tok.shape
        ep = e + self.dense_pe  # (1, I, 256)

        queries = _ln(_token_attention(blk.self_attn, tok, tok, tok), blk.norm1)

        # token → image: keys (x_b + pe), values x_b
        a = blk.cross_attn_token_to_image
        qh = _heads(a.q_proj(queries + tok))  # (B, 8, T, d)
        d = qh.shape[-1]
        k0 = _heads(ep @ a.k_proj.weight.t())  # (1, 8, I, d), once per call
        v0 = _heads(e @ a.v_proj.weight.t())  # (1, 8, I, d)
        wk3 = _w_heads(a.k_proj) @ w3  # (8, d, 16)
        wv3 = _w_heads(a.v_proj) @ w3  # (8, d, 16)
        s = qh @ k0.transpose(2, 3) + has[..., None] * (
            (qh @ wk3).reshape(b, -1, 16) @ h.transpose(1, 2)
        ).reshape(b, _HEADS, t, -1)
        p = torch.softmax(s / d**0.5, dim=-1)  # (B, 8, T, I)
        ph = (p.reshape(b, _HEADS * t, -1) @ h).reshape(b, _HEADS, t, 16)
        out = p @ v0 + has[..., None] * (ph @ wv3.transpose(1, 2))  # (B, 8, T, d)
        out = _merge(out) + a.v_proj.bias + base @ a.v_proj.weight.t()
        queries = _ln(queries + a.out_proj(out), blk.norm2)

        queries = _ln(queries + blk.mlp(queries), blk.norm3)

        # image → token: image queries (x_b + pe)
        a = blk.cross_attn_image_to_token
        kh = _heads(a.k_proj(queries + tok))  # (B, 8, T, d)
        q0 = _heads(ep @ a.q_proj.weight.t() + a.q_proj.bias)  # (1, 8, I, d), once per call
        wq3 = _w_heads(a.q_proj) @ w3  # (8, d, 16)
        cq = _heads(base @ a.q_proj.weight.t())  # (B, 8, 1, d)
        qcorr = has[..., None] * (h[:, None] @ wq3.transpose(1, 2))  # (B, 8, I, d)
        s = (q0 + cq + qcorr) @ kh.transpose(2, 3)  # (B, 8, I, T)
        p = torch.softmax(s / d**0.5, dim=-1).transpose(1, 2).reshape(b, -1, _HEADS * t)  # (B, I, 8T)
        # x_b + out in one product: [p | has·h | has] @ [values ; W3ᵀ ; b3 - nm] + (e + nm)
        lhs = torch.cat([p, has * h, has.expand(-1, p.shape[1], -1)], dim=-1)  # (B, I, 8T + 17)
        rhs = torch.cat(
            [_folded_values(a, queries), w3.t().expand(b, -1, -1), (b3 - nm).expand(b, -1, -1)], 1
        )
        return queries, _ln(lhs @ rhs + (e + nm), blk.norm4)

    def _block(
        self, blk: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor, tok: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A later block: ``queries (B, T, 256)``, per-prompt image tokens ``keys (B, I, 256)``."""
        q = queries + tok
        queries = _ln(queries + _token_attention(blk.self_attn, q, q, queries), blk.norm1)
        kp = keys + self.dense_pe
        queries = _ln(
            queries + _token_to_image(blk.cross_attn_token_to_image, queries + tok, kp, keys), blk.norm2
        )
        queries = _ln(queries + blk.mlp(queries), blk.norm3)
        keys = _ln(
            keys + _image_to_token(blk.cross_attn_image_to_token, kp, queries + tok, queries), blk.norm4
        )
        return queries, keys

    def _upscale_masks(self, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """``keys (B, I, 256)`` and hypernetwork outputs ``hyper (B, 4, 32)`` → ``(B, 4, 256, 256)``.

        ConvTranspose2d(k=2, s=2) is a per-pixel product: ``out[o, 2i+a, 2j+c] = Σ W[c_in, o, a, c] x``.
        """
        up = self.mask_decoder.output_upscaling
        ct1, ln, ct2 = up[0], up[1], up[3]
        b = keys.shape[0]
        w1 = ct1.weight.permute(0, 2, 3, 1).reshape(ct1.in_channels, -1)  # (256, 4·64): (a, c, o)
        b1 = ct1.bias.repeat(4)  # 2-D products with the bias fused (Gemm)
        u = torch.addmm(b1, keys.reshape(-1, ct1.in_channels), w1).reshape(-1, ct1.out_channels)
        u = F.gelu(F.layer_norm(u, (ct1.out_channels,), ln.weight, ln.bias, ln.eps))  # (B·I·4, 64)
        w2 = ct2.weight.permute(0, 2, 3, 1).reshape(ct2.in_channels, -1)  # (64, 4·32)
        g = F.gelu(torch.addmm(ct2.bias.repeat(4), u, w2))  # (B·I·4, 4·32)
        m = g.reshape(b, -1, ct2.out_channels) @ hyper.transpose(1, 2)  # (B, I·16, 4)
        gh, gw = self.prompt_encoder.image_embedding_size
        k = hyper.shape[1]
        # (B, i, j, a, c, a2, c2, k) → (B, k, i, a, a2, j, c, c2) in low-rank steps (onnxruntime's
        # general N-d transpose is slow): move k first, pair the sub-pixel offsets, then rows/cols
        m = m.transpose(1, 2).reshape(b * k * gh * gw, 2, 2, 2, 2).permute(0, 1, 3, 2, 4)
        m = m.reshape(b * k * gh, gw, 4, 4).transpose(1, 2)
        return m.reshape(b, k, 4 * gh, 4 * gw)

    def decode(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, mask_input: torch.Tensor, has_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """See the module docstring; ``embeddings`` is one image ``(1, 256, 64, 64)``."""
        md = self.mask_decoder
        b = sparse.shape[0]
        out_tok = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tok = torch.cat([out_tok.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # (B, T, 256)

        e = embeddings.flatten(2).transpose(1, 2)  # (1, I, 256)
        h = self.prompt_encoder.mask_downscaling[:-1](mask_input).flatten(2).transpose(1, 2)  # (B, I, 16)
        has = has_mask.reshape(-1, 1, 1)

        layers = md.transformer.layers
        queries, keys = self._block0(layers[0], tok, e, h, has)
        for blk in layers[1:]:
            queries, keys = self._block(blk, queries, keys, tok)
        fa = md.transformer.final_attn_token_to_image
        queries = _ln(
            queries + _token_to_image(fa, queries + tok, keys + self.dense_pe, keys),
            md.transformer.norm_final_attn,
        )

        mask_tokens = queries[:, 1 : 1 + md.num_mask_tokens]
        hyper = torch.stack(
            [mlp(mask_tokens[:, i]) for i, mlp in enumerate(md.output_hypernetworks_mlps)], dim=1
        )
        low = self._upscale_masks(keys, hyper)
        return low, md.iou_prediction_head(queries[:, 0])
