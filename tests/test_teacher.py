"""SAM ViT teacher: official checkpoint layout (keys, shapes, parameter counts), attention mechanics,
strict loading with explicit errors, and checkpoint round trips."""

from __future__ import annotations

import math

import pytest
import torch

from edgesam_backend.model.checkpoint import CheckpointError
from edgesam_backend.model.edge_sam import build_edge_sam
from edgesam_backend.model.sam_vit import (
    Block,
    build_sam_teacher,
    get_rel_pos,
    infer_vit_kind,
    teacher_layout,
    window_partition,
    window_unpartition,
)

BUFFER = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"


def _params(layout: dict[str, tuple[int, ...]], prefix: str = "") -> int:
    return sum(math.prod(s) for k, s in layout.items() if k.startswith(prefix) and k != BUFFER)


def test_vit_b_layout_matches_sam_checkpoint():
    lay = teacher_layout("vit_b")
    # representative keys/shapes of sam_vit_b_01ec64.pth
    expected = {
        "image_encoder.patch_embed.proj.weight": (768, 3, 16, 16),
        "image_encoder.patch_embed.proj.bias": (768,),
        "image_encoder.pos_embed": (1, 64, 64, 768),
        "image_encoder.blocks.0.norm1.weight": (768,),
        "image_encoder.blocks.0.attn.qkv.weight": (2304, 768),
        "image_encoder.blocks.0.attn.qkv.bias": (2304,),
        "image_encoder.blocks.0.attn.proj.weight": (768, 768),
        "image_encoder.blocks.0.attn.rel_pos_h": (27, 64),  # windowed: 2*14-1
        "image_encoder.blocks.0.attn.rel_pos_w": (27, 64),
        "image_encoder.blocks.2.attn.rel_pos_h": (127, 64),  # global: 2*64-1
        "image_encoder.blocks.11.attn.rel_pos_w": (127, 64),
        "image_encoder.blocks.10.attn.rel_pos_h": (27, 64),
        "image_encoder.blocks.0.mlp.lin1.weight": (3072, 768),
        "image_encoder.blocks.0.mlp.lin2.weight": (768, 3072),
        "image_encoder.blocks.11.norm2.bias": (768,),
        "image_encoder.neck.0.weight": (256, 768, 1, 1),
        "image_encoder.neck.1.weight": (256,),
        "image_encoder.neck.2.weight": (256, 256, 3, 3),
        "image_encoder.neck.3.bias": (256,),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "mask_decoder.iou_token.weight": (1, 256),
        "mask_decoder.mask_tokens.weight": (4, 256),
    }
    for k, shape in expected.items():
        assert lay[k] == shape, k
    assert "image_encoder.neck.0.bias" not in lay and "image_encoder.neck.2.bias" not in lay
    assert "image_encoder.blocks.12.norm1.weight" not in lay
    # 3 + 14 per block + 6 neck keys, plus SAM's 17 prompt-encoder and 120 mask-decoder keys
    assert len(lay) == 3 + 12 * 14 + 6 + 17 + 120 == 314
    # parameter counts: image encoder 89.67 M, whole model 93.74 M (the "93.7M" of SAM ViT-B)
    assert _params(lay, "image_encoder.") == 89_670_912
    assert _params(lay) == 93_735_472


def test_vit_l_h_layouts_and_counts():
    lay_l, lay_h = teacher_layout("vit_l"), teacher_layout("vit_h")
    assert lay_l["image_encoder.pos_embed"] == (1, 64, 64, 1024)
    assert lay_l["image_encoder.blocks.5.attn.rel_pos_h"] == (127, 64)
    assert lay_l["image_encoder.blocks.4.attn.rel_pos_h"] == (27, 64)
    assert lay_h["image_encoder.pos_embed"] == (1, 64, 64, 1280)
    assert lay_h["image_encoder.blocks.7.attn.rel_pos_w"] == (127, 80)
    assert lay_h["image_encoder.blocks.0.attn.rel_pos_w"] == (27, 80)
    assert lay_h["image_encoder.blocks.31.mlp.lin1.weight"] == (5120, 1280)
    assert len(lay_l) == 3 + 24 * 14 + 6 + 137 and len(lay_h) == 3 + 32 * 14 + 6 + 137
    assert _params(lay_l) == 312_342_832  # SAM ViT-L, 312.3 M
    assert _params(lay_h) == 641_090_608  # SAM ViT-H, 641.1 M as in EdgeSAM's Tab. 1


def test_prompt_encoder_and_decoder_layout_equal_edgesam():
    lay = teacher_layout("vit_h")
    edge = {k: tuple(v.shape) for k, v in build_edge_sam().state_dict().items()}
    for prefix in ("prompt_encoder.", "mask_decoder."):
        assert {k: v for k, v in lay.items() if k.startswith(prefix)} == {
            k: v for k, v in edge.items() if k.startswith(prefix)
        }


def test_embedding_sizes_scale_with_input():
    lay = teacher_layout("vit_b", img_size=512)
    assert lay["image_encoder.pos_embed"] == (1, 32, 32, 768)
    assert lay["image_encoder.blocks.2.attn.rel_pos_h"] == (63, 64)
    assert lay["image_encoder.blocks.0.attn.rel_pos_h"] == (27, 64)
    t = build_sam_teacher("tiny", img_size=128)
    with torch.no_grad():
        assert t.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 8, 8)
    assert t.prompt_encoder.get_dense_pe().shape == (1, 256, 8, 8)


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 10, 7, 3)
    win, padded = window_partition(x, 4)
    assert padded == (12, 8) and win.shape == (2 * 3 * 2, 4, 4, 3)
    assert torch.equal(window_unpartition(win, 4, padded, (10, 7)), x)
    assert torch.equal(win[0], x[0, :4, :4])


def test_rel_pos_lookup_and_interpolation():
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # size 4 → 2*4-1 rows
    r = get_rel_pos(4, 4, table)
    assert r.shape == (4, 4, 2)
    for i in range(4):
        for j in range(4):
            assert r[i, j, 0] == i - j + 3
    assert get_rel_pos(8, 8, table).shape == (8, 8, 2)  # table interpolated to 15 rows


def test_windowed_attention_is_local_and_global_is_not():
    torch.manual_seed(0)
    for window, local in ((4, True), (0, False)):
        blk = Block(16, 2, 4.0, window, (8, 8)).eval()
        with torch.no_grad():
            blk.attn.rel_pos_h.normal_()
            x = torch.randn(1, 8, 8, 16)
            y0 = blk(x)
            x2 = x.clone()
            x2[0, 0, 0] += 1.0
            y1 = blk(x2)
        far = (y1 - y0)[0, 4:, 4:].abs().max()
        assert (far == 0) if local else (far > 0)


def test_roundtrip_and_wrappers(tmp_path):
    torch.manual_seed(1)
    t = build_sam_teacher("tiny", img_size=128)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    sd = t.state_dict()
    path = tmp_path / "sam_tiny.pth"
    torch.save(sd, path)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        ref = t.image_encoder(x)
        for source in (path, {"model": sd}, {f"module.{k}": v for k, v in sd.items()}):
            t2 = build_sam_teacher("tiny", source, img_size=128)
            assert torch.equal(t2.image_encoder(x), ref)
    assert infer_vit_kind(sd) == "tiny"


def test_checkpoint_made_at_another_size_is_adapted(tmp_path):
    t = build_sam_teacher("tiny", img_size=256)
    torch.save(t.state_dict(), tmp_path / "t.pth")
    t2 = build_sam_teacher("tiny", tmp_path / "t.pth", img_size=128)
    assert t2.image_encoder.pos_embed.shape == (1, 8, 8, 64)
    assert t2.image_encoder.blocks[1].attn.rel_pos_h.shape == (15, 32)
    assert t2.image_encoder.blocks[0].attn.rel_pos_h.shape == (7, 32)


def test_load_errors_are_explicit(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found.*sam_vit_h_4b8939\.pth"):
        build_sam_teacher("vit_h", tmp_path / "missing.pth")
    sd = build_sam_teacher("tiny", img_size=128).state_dict()
    broken = dict(sd)
    del broken["image_encoder.neck.0.weight"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing keys: image_encoder.neck.0.weight.*1 unexpected"):
        build_sam_teacher("tiny", broken, img_size=128)
    wrong = dict(sd)
    wrong["mask_decoder.iou_token.weight"] = torch.zeros(1, 128)
    with pytest.raises(CheckpointError, match=r"shape mismatches: mask_decoder.iou_token.weight \(1, 128\)"):
        build_sam_teacher("tiny", wrong, img_size=128)
    # a ViT-B-like checkpoint given as vit_h: the message names the kind it looks like
    fake_b = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    fake_b |= {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(768) for i in range(12)}
    with pytest.raises(CheckpointError, match="looks like a SAM vit_b checkpoint"):
        build_sam_teacher("vit_h", fake_b)
    with pytest.raises(CheckpointError, match="EdgeSAM/RepViT checkpoint"):
        build_sam_teacher("tiny", build_edge_sam().state_dict(), img_size=128)
    enc_only = {k: v for k, v in sd.items() if k.startswith("image_encoder.")}
    with pytest.raises(CheckpointError, match="use the full SAM checkpoint"):
        build_sam_teacher("tiny", enc_only, img_size=128)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read SAM checkpoint"):
        build_sam_teacher("tiny", tmp_path / "junk.pth", img_size=128)
    with pytest.raises(ValueError, match="unknown SAM teacher"):
        build_sam_teacher("vit_x")


@pytest.mark.parametrize("kind", ["vit_b", "vit_h"])
def test_full_size_forward_shapes_on_meta_device(kind):
    """1024 input → 64x64 tokens, windows of 14 padded to 70x70 → (1, 256, 64, 64); no memory used."""
    from edgesam_backend.model.sam_vit import _build

    with torch.device("meta"):
        model = _build(kind, 1024)
        assert model.image_encoder(torch.empty(1, 3, 1024, 1024)).shape == (1, 256, 64, 64)
