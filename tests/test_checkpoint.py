"""Checkpoint loading: the official layout loads strictly; everything else fails loudly."""

from __future__ import annotations

import pytest
import torch

from edgesam_backend.export.onnx import reparameterize_encoder
from edgesam_backend.model.checkpoint import CheckpointError, load_edge_sam, load_state_dict_file
from edgesam_backend.model.edge_sam import build_edge_sam
from edgesam_backend.model.repvit import RepViT

from .conftest import CHECKPOINT, requires_shared

pytestmark = requires_shared


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


def _first_param(model) -> torch.Tensor:
    return model.image_encoder.features[0][0].c.weight


def test_loads_reference_strict(sd):
    model = load_edge_sam(CHECKPOINT)
    assert torch.equal(_first_param(model), sd["image_encoder.features.0.0.c.weight"])
    assert not model.training


@pytest.mark.parametrize("wrap", ["model", "state_dict"])
def test_wrapped_checkpoints(tmp_path, sd, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save({wrap: sd, "epoch": 3, "optimizer": {}}, path)
    model = load_edge_sam(path)
    assert torch.equal(_first_param(model), sd["image_encoder.features.0.0.c.weight"])


def test_ddp_prefix_is_stripped(sd):
    model = load_edge_sam({f"module.{k}": v for k, v in sd.items()})
    assert torch.equal(_first_param(model), sd["image_encoder.features.0.0.c.weight"])


def test_missing_keys_named(sd):
    bad = {k: v for k, v in sd.items() if not k.startswith("mask_decoder.iou_prediction_head")}
    with pytest.raises(CheckpointError, match=r"6 missing keys: mask_decoder\.iou_prediction_head"):
        load_edge_sam(bad)


def test_unexpected_keys_named(sd):
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: extra\.weight"):
        load_edge_sam({**sd, "extra.weight": torch.zeros(1)})


def test_shape_mismatch_named(sd):
    bad = dict(sd)
    bad["mask_decoder.mask_tokens.weight"] = torch.zeros(3, 256)
    with pytest.raises(CheckpointError, match=r"mask_decoder\.mask_tokens\.weight \(3, 256\) != \(4, 256\)"):
        load_edge_sam(bad)


def test_sam_checkpoint_gets_a_hint():
    sam_like = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    with pytest.raises(CheckpointError, match="SAM ViT or MobileSAM"):
        load_edge_sam(sam_like)


def test_rpn_keys_must_match_the_head(sd):
    """A checkpoint with rpn_head.* builds the head; malformed head weights are a clear error."""
    model = load_edge_sam(sd, with_rpn=True)  # official weights + untrained head
    good = model.state_dict()
    again = load_edge_sam(good)
    assert again.rpn_head is not None
    assert torch.equal(_first_param(again), sd["image_encoder.features.0.0.c.weight"])
    with pytest.raises(CheckpointError, match=r"region proposal head .* rpn_head\.cls\.weight"):
        load_edge_sam({**sd, "rpn_head.cls.weight": torch.zeros(2, 2)})
    plain = load_edge_sam({**sd, "rpn_head.cls.weight": torch.zeros(2, 2)}, with_rpn=False)
    assert plain.rpn_head is None  # the head's keys are skipped when no head is built


def test_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_state_dict_file(junk)
    listy = tmp_path / "list.pth"
    torch.save([1, 2, 3], listy)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        load_state_dict_file(listy)


def test_random_init_has_official_layout():
    assert set(build_edge_sam().state_dict()) == set(torch.load(CHECKPOINT, weights_only=True))


def test_reparameterised_encoder_is_equivalent():
    enc = load_edge_sam(CHECKPOINT).image_encoder
    fast = reparameterize_encoder(enc)
    assert isinstance(fast, RepViT)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), enc(x), rtol=0, atol=1e-4)
