"""SAM's ViT image encoder (B / L / H) as the distillation teacher, with SAM's checkpoint layout.

The module and parameter names reproduce the official ``sam_vit_b_01ec64.pth`` /
``sam_vit_l_0b3195.pth`` / ``sam_vit_h_4b8939.pth`` state_dicts:

* ``image_encoder.patch_embed.proj.{weight,bias}``: 16x16 stride-16 convolution, 3 → D;
* ``image_encoder.pos_embed``: ``(1, S/16, S/16, D)`` absolute position embedding;
* ``image_encoder.blocks.{i}.norm1 / attn.qkv / attn.proj / attn.rel_pos_h / attn.rel_pos_w / norm2 /
  mlp.lin1 / mlp.lin2``: pre-norm transformer blocks; windowed attention (window 14, zero-padded to a
  multiple of the window) except at the global-attention indexes; decomposed relative position
  embeddings of shape ``(2 * size - 1, head_dim)`` with ``size`` the window (windowed blocks) or the
  token grid (global blocks);
* ``image_encoder.neck.{0..3}``: 1x1 conv D → 256 (no bias), LayerNorm2d, 3x3 conv (no bias),
  LayerNorm2d.

The prompt encoder and mask decoder are the same classes as EdgeSAM's (same keys and shapes as SAM's),
so :class:`SamTeacher` has the whole SAM state_dict: ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``. ``pixel_mean``/``pixel_std`` are non-persistent buffers, as in SAM.

Sizes scale with ``img_size`` (embedding ``img_size/16``, low-res masks 4x that). A 1024 checkpoint
loads into a smaller (or larger) teacher by resizing ``pos_embed`` (bicubic) and the global blocks'
relative position tables (linear), see :func:`adapt_state_dict_to_img_size`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..runtime.transforms import PIXEL_MEAN, PIXEL_STD
from .checkpoint import CheckpointError, layout_problems, read_checkpoint_file, unwrap_state_dict
from .common import LayerNorm2d, MLPBlock
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .transformer import TwoWayTransformer

PATCH_SIZE = 16
PROMPT_EMBED_DIM = 256


@dataclass(frozen=True)
class VitConfig:
    """One ViT image-encoder size: embedding dim, depth, heads, global-attention block indexes."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    mlp_ratio: float = 4.0
    out_chans: int = PROMPT_EMBED_DIM


#: SAM's three encoders (segment-anything ``build_sam.py``) plus a tiny one for tests.
VIT_CONFIGS: dict[str, VitConfig] = {
    "vit_b": VitConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": VitConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": VitConfig(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": VitConfig(64, 2, 2, (1,), window_size=4),
}

#: File names of the official checkpoints, for messages.
OFFICIAL_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


# --- the ViT ---------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping patches: ``(B, 3, S, S)`` → ``(B, S/16, S/16, D)`` (channels last; key ``proj``)."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 768, patch_size: int = PATCH_SIZE) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` → ``(B * nWin, window, window, C)`` windows, zero-padding H and W up to a
    multiple of ``window``; also returns the padded ``(Hp, Wp)``."""
    b, h, w, c = x.shape
    pad_h = (window - h % window) % window
    pad_w = (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows → ``(B, H, W, C)`` with the padding removed."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings ``(q_size, k_size, C)`` for every query/key offset.

    The table ``rel_pos (L, C)`` is linearly interpolated to ``2 * max(q_size, k_size) - 1`` rows when
    its length differs; coordinates of the shorter side are stretched to the longer one.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        table = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        table = table.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        table = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[offsets.long()]


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_hw: tuple[int, int],
    k_hw: tuple[int, int],
) -> torch.Tensor:
    """Add the decomposed (row + column) relative position bias to attention logits.

    ``attn (B, qh*qw, kh*kw)``, ``q (B, qh*qw, C)``; the bias is ``q · R_h[row offset]`` plus
    ``q · R_w[column offset]`` (MViTv2's decomposition, as SAM uses it).
    """
    qh, qw = q_hw
    kh, kw = k_hw
    rh = get_rel_pos(qh, kh, rel_pos_h)
    rw = get_rel_pos(qw, kw, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, qh, qw, dim)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    attn = attn.view(b, qh, qw, kh, kw) + bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return attn.view(b, qh * qw, kh * kw)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` grid with decomposed relative positions
    (keys ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``)."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).reshape(b, h * w, 3, nh, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * nh, h * w, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
        attn = attn.softmax(dim=-1)
        out = (attn @ v).view(b, nh, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, (window_size, window_size) if window_size > 0 else input_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            x, padded = window_partition(x, self.window_size)
            x = self.attn(x)
            x = window_unpartition(x, self.window_size, padded, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: ``(B, 3, S, S)`` normalised, padded → ``(B, 256, S/16, S/16)``."""

    def __init__(self, cfg: VitConfig, img_size: int = 1024) -> None:
        super().__init__()
        if img_size % PATCH_SIZE:
            raise ValueError(f"img_size must be a multiple of {PATCH_SIZE}, got {img_size}")
        self.img_size = img_size
        self.cfg = cfg
        grid = img_size // PATCH_SIZE
        self.patch_embed = PatchEmbed(3, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                cfg.embed_dim,
                cfg.num_heads,
                cfg.mlp_ratio,
                0 if i in cfg.global_attn_indexes else cfg.window_size,
                (grid, grid),
            )
            for i in range(cfg.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, cfg.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(cfg.out_chans),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        pos = self.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:  # another input size than built for
            pos = resize_pos_embed(pos, (x.shape[1], x.shape[2]))
        x = x + pos
        for blk in self.blocks:
            x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a ``(1, h, w, D)`` absolute position embedding to ``(1, *grid, D)``."""
    out = F.interpolate(pos.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1)


# --- the whole teacher ------------------------------------------------------------------------------


class SamTeacher(nn.Module):
    """SAM (ViT encoder + prompt encoder + mask decoder) with SAM's state_dict layout.

    Same interface as :class:`edgesam_backend.model.edge_sam.EdgeSam` for what distillation and
    evaluation use: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.
    """

    mask_threshold: float = 0.0

    def __init__(
        self, image_encoder: ImageEncoderViT, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer(
            "pixel_mean", torch.from_numpy(PIXEL_MEAN.copy()).view(-1, 1, 1), persistent=False
        )
        self.register_buffer("pixel_std", torch.from_numpy(PIXEL_STD.copy()).view(-1, 1, 1), persistent=False)

    @property
    def kind(self) -> str:
        return next(k for k, v in VIT_CONFIGS.items() if v == self.image_encoder.cfg)

    @property
    def img_size(self) -> int:
        return self.image_encoder.img_size


def _build(kind: str, img_size: int) -> SamTeacher:
    if kind not in VIT_CONFIGS:
        raise ValueError(f"unknown SAM teacher {kind!r}; choose one of {sorted(VIT_CONFIGS)}")
    grid = img_size // PATCH_SIZE
    return SamTeacher(
        image_encoder=ImageEncoderViT(VIT_CONFIGS[kind], img_size),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(img_size, img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=PROMPT_EMBED_DIM,
            transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_EMBED_DIM, mlp_dim=2048, num_heads=8),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )


def teacher_layout(kind: str, img_size: int = 1024) -> dict[str, tuple[int, ...]]:
    """Expected state_dict keys and shapes of a teacher (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = _build(kind, img_size)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def infer_vit_kind(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which SAM encoder a state_dict holds, from the patch-embedding width and the block count."""
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return None
    depth = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("image_encoder.blocks.")), default=-1)
    for kind, cfg in VIT_CONFIGS.items():
        if cfg.embed_dim == w.shape[0] and cfg.depth == depth:
            return kind
    return None


def adapt_state_dict_to_img_size(
    sd: Mapping[str, torch.Tensor], kind: str, img_size: int
) -> dict[str, torch.Tensor]:
    """Resize ``pos_embed`` and the global blocks' ``rel_pos_h/w`` of a checkpoint made at another
    input size to ``img_size`` (bicubic / linear interpolation); other tensors are unchanged."""
    out = dict(sd)
    grid = img_size // PATCH_SIZE
    pos = out.get("image_encoder.pos_embed")
    if pos is not None and pos.ndim == 4 and pos.shape[1:3] != (grid, grid):
        out["image_encoder.pos_embed"] = resize_pos_embed(pos.float(), (grid, grid)).to(pos.dtype)
    for i in VIT_CONFIGS[kind].global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{i}.attn.rel_pos_{axis}"
            rel = out.get(key)
            if rel is not None and rel.ndim == 2 and rel.shape[0] != 2 * grid - 1:
                t = F.interpolate(rel.float().T[None], size=2 * grid - 1, mode="linear")[0].T
                out[key] = t.contiguous().to(rel.dtype)
    return out


def check_teacher_state_dict(sd: Mapping[str, torch.Tensor], kind: str, img_size: int = 1024) -> None:
    """Raise :class:`CheckpointError` unless ``sd`` has exactly the keys and shapes of SAM ``kind``."""
    expected = teacher_layout(kind, img_size)
    parts = layout_problems(sd, expected)
    if not parts:
        return
    found = infer_vit_kind(sd)
    if any(k.startswith("image_encoder.features.") for k in sd):
        hint = " (this is an EdgeSAM/RepViT checkpoint, not SAM)"
    elif found is not None and found != kind:
        hint = f" (this looks like a SAM {found} checkpoint; set the teacher kind to {found})"
    elif any(k.startswith("image_encoder.") for k in sd) and not any(
        k.startswith(("prompt_encoder.", "mask_decoder.")) for k in sd
    ):
        hint = " (the prompt_encoder.* / mask_decoder.* weights are absent: use the full SAM checkpoint)"
    else:
        hint = ""
    raise CheckpointError(f"not a SAM {kind} checkpoint{hint}: " + "; ".join(parts))


def build_sam_teacher(
    kind: str = "vit_h",
    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    img_size: int = 1024,
) -> SamTeacher:
    """Build SAM ``kind`` (``vit_b`` / ``vit_l`` / ``vit_h`` / ``tiny``) at ``img_size`` in eval mode.

    ``checkpoint``: a ``sam_vit_*.pth`` path, a loaded state_dict (raw, ``{"model": ...}`` or
    ``module.``-prefixed), or ``None`` for random weights. Keys and shapes are checked strictly
    (after resizing the position tables if the checkpoint was made at another input size); every
    mismatch raises :class:`CheckpointError` naming the keys.
    """
    if kind not in VIT_CONFIGS:
        raise ValueError(f"unknown SAM teacher {kind!r}; choose one of {sorted(VIT_CONFIGS)}")
    sd = None
    if checkpoint is not None:
        sd = _read_checkpoint(checkpoint)
        try:
            native = _native_img_size(sd)
            if native is not None and native != img_size:
                sd = adapt_state_dict_to_img_size(sd, kind, img_size)
            check_teacher_state_dict(sd, kind, img_size)
        except CheckpointError as exc:
            where = f"{checkpoint}: " if not isinstance(checkpoint, Mapping) else ""
            raise CheckpointError(f"{where}{exc}") from None
    model = _build(kind, img_size)
    if sd is not None:
        model.load_state_dict(sd, strict=True)
    return model.eval()


def _native_img_size(sd: Mapping[str, torch.Tensor]) -> int | None:
    pos = sd.get("image_encoder.pos_embed")
    return int(pos.shape[1]) * PATCH_SIZE if pos is not None and pos.ndim == 4 else None


def _read_checkpoint(checkpoint: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        return unwrap_state_dict(checkpoint)
    hint = (
        f" (the official files are {', '.join(OFFICIAL_FILES.values())} from "
        "https://github.com/facebookresearch/segment-anything)"
    )
    return read_checkpoint_file(checkpoint, what="SAM checkpoint", hint=hint)
