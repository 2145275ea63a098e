"""Deterministic unit tests of the distillation rules with constructed inputs and known values
(edgesam-training.md §8: masked MSE, BCE/Dice, disagreement sampling, IoU-argmax choice, token slicing,
prompt subsampling, LR scaling and schedule, stability score)."""

from __future__ import annotations

import math

import pytest
import torch

from edgesam_backend.model.edge_sam import stability_score
from edgesam_backend.model.mask_decoder import MaskDecoder
from edgesam_backend.model.transformer import TwoWayTransformer
from edgesam_backend.training.distill_config import OptimConfig, Phase1Config, Phase2Config
from edgesam_backend.training.losses import (
    mask_distill_loss,
    masked_mse,
    valid_mask,
    weighted_bce,
    weighted_dice,
)
from edgesam_backend.training.prompts import (
    sample_disagreement_points,
    select_by_iou,
    subsample_prompts,
)
from edgesam_backend.training.schedule import make_schedule, param_groups, scaled_lr

# --- padding masks and the phase-1 loss ------------------------------------------------------------


def test_valid_mask_downsampling():
    v = valid_mask([(64, 128), (72, 128)], 128, 8, threshold=False)
    assert v.shape == (2, 1, 8, 8)
    assert torch.equal(v[0, 0, :4], torch.ones(4, 8)) and torch.equal(v[0, 0, 4:], torch.zeros(4, 8))
    assert torch.allclose(v[1, 0, 4], torch.full((8,), 0.5))  # 72/16 = 4.5 rows: a half-covered row
    t = valid_mask([(72, 128)], 128, 8, threshold=True)
    assert t[0, 0, :, 0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # > 0.5 drops the half row


def test_masked_mse_ignores_padding_and_known_value():
    valid = valid_mask([(64, 128)], 128, 8, threshold=True)
    t = torch.zeros(1, 4, 8, 8)
    s = t.clone()
    s[..., 4:, :] = 100.0  # differences only in the padding
    assert float(masked_mse(s, t, valid)) == 0.0
    s[:, :2, :4, :] += 2.0  # half the channels differ by 2 in the valid half: mean_c = 2
    assert float(masked_mse(s, t, valid)) == pytest.approx(2.0)
    # batch mean of per-image means: the second image (all valid, error 1) weighs the same
    v2 = torch.cat([valid, torch.ones_like(valid)])
    s2 = torch.cat([s, torch.ones(1, 4, 8, 8)])
    assert float(masked_mse(s2, torch.zeros_like(s2), v2)) == pytest.approx((2.0 + 1.0) / 2)


# --- phase-2 losses ---------------------------------------------------------------------------------


def test_bce_with_fractional_weights():
    logits = torch.zeros(2, 1, 2, 2)  # p = 0.5 everywhere → BCE = ln 2 whatever the target
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    w = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert float(weighted_bce(logits, target, w)) == pytest.approx(math.log(2))
    # prompt 0: pixel a (w=1, y=1, logit 2), pixel b (w=.5, y=0, logit 2) → (1·sp(-2) + .5·sp(2)) / 1.5
    logits2 = torch.full((1, 1, 2, 2), 2.0)
    sp = lambda z: math.log1p(math.exp(z))  # noqa: E731
    expected = (1 * sp(-2) + 0.5 * sp(2)) / 1.5
    assert float(weighted_bce(logits2, target[:1], w[:1])) == pytest.approx(expected, rel=1e-6)


def test_dice_smoothing_and_weights():
    # empty target and empty prediction: (0 + 1) / (0 + 0 + 1) → loss 0
    assert (
        float(weighted_dice(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))) == 0.0
    )
    # p = 0.5 on 4 pixels of target 1, weight 1: 1 - (2·2 + 1)/(2 + 4 + 1) = 2/7
    p = torch.full((1, 1, 2, 2), 0.5)
    y = torch.ones(1, 1, 2, 2)
    assert float(weighted_dice(p, y, torch.ones(1, 1, 2, 2))) == pytest.approx(2 / 7)
    # weight 0.5 everywhere: vp = .25, vy = .5 → 1 - (2·4·.125 + 1)/(1 + 2 + 1) = 0.5
    assert float(weighted_dice(p, y, torch.full((1, 1, 2, 2), 0.5))) == pytest.approx(0.5)
    # mean over (prompt, channel): channel 2 perfect (loss 0) → (2/7 + 0) / 2
    p2 = torch.cat([p, torch.zeros(1, 1, 2, 2)], dim=1)
    y2 = torch.cat([y, torch.zeros(1, 1, 2, 2)], dim=1)
    assert float(weighted_dice(p2, y2, torch.ones(1, 1, 2, 2))) == pytest.approx(1 / 7)


def test_mask_loss_uses_hard_teacher_labels_and_weights():
    s = torch.randn(3, 4, 8, 8)
    t = torch.randn(3, 4, 8, 8)
    w = torch.rand(3, 1, 8, 8)
    total, bce, dice = mask_distill_loss(s, t, w, bce_weight=5.0, dice_weight=5.0)
    y = (t > 0).float()
    assert float(bce) == pytest.approx(float(weighted_bce(s, y, w)))
    assert float(dice) == pytest.approx(float(weighted_dice(torch.sigmoid(s), y, w)))
    assert float(total) == pytest.approx(5 * float(bce) + 5 * float(dice))
    # scaling teacher logits does not change hard labels
    total2, _, _ = mask_distill_loss(s, t * 7.0, w)
    assert float(total2) == pytest.approx(float(total))


# --- disagreement sampling --------------------------------------------------------------------------


def _masks(size: int = 16):
    return torch.zeros(1, size, size, dtype=torch.bool), torch.zeros(1, size, size, dtype=torch.bool)


def test_false_positive_gives_negative_point_scaled_by_4():
    pred, ref = _masks()
    pred[0, 2:6, 3:8] = True  # 20 px student-only (FP)
    g = torch.Generator().manual_seed(0)
    coords, labels = sample_disagreement_points(pred, ref, 1, scale=4.0, generator=g)
    assert labels.tolist() == [[0]]
    x, y = coords[0, 0].tolist()
    assert x % 4 == 0 and y % 4 == 0 and 3 <= x / 4 < 8 and 2 <= y / 4 < 6


def test_false_negative_gives_positive_point():
    pred, ref = _masks()
    ref[0, 10:14, 10:14] = True  # 16 px teacher-only (FN)
    pred[0, 0:3, 0:3] = ref[0, 0:3, 0:3] = True  # agreement is never sampled
    coords, labels = sample_disagreement_points(
        pred, ref, 1, scale=4.0, generator=torch.Generator().manual_seed(1)
    )
    assert labels.tolist() == [[1]]
    x, y = (coords[0, 0] / 4).tolist()
    assert 10 <= x < 14 and 10 <= y < 14


def test_small_disagreement_gives_dummy_point():
    pred, ref = _masks()
    pred[0, 0, :9] = True  # 9 < 10 px
    coords, labels = sample_disagreement_points(pred, ref, 1)
    assert labels.tolist() == [[-2]] and coords.tolist() == [[[0.0, 0.0]]]
    pred[0, 0, 9] = True  # exactly 10 → a real point
    _, labels = sample_disagreement_points(pred, ref, 1)
    assert labels.tolist() == [[0]]
    _, labels = sample_disagreement_points(pred, ref, 2)  # 2 points need 20 px
    assert labels.tolist() == [[-2, -2]]


def test_sampling_is_uniform_over_the_union():
    pred, ref = _masks(20)
    pred[0, :2, :15] = True  # 30 px FP
    ref[0, 5:11, :15] = True  # 90 px FN
    n = 4000
    g = torch.Generator().manual_seed(0)
    coords, labels = sample_disagreement_points(pred.expand(n, -1, -1), ref.expand(n, -1, -1), 1, generator=g)
    frac_neg = float((labels == 0).float().mean())
    assert frac_neg == pytest.approx(0.25, abs=0.03)  # proportional to area: 30 / 120
    # every pixel of the union is reachable, nothing outside it
    px = {(int(x) // 4, int(y) // 4) for x, y in coords[:, 0].tolist()}
    assert len(px) == 120


def test_select_by_teacher_iou():
    iou = torch.tensor([[0.1, 0.9, 0.2, 0.3], [0.8, 0.1, 0.2, 0.3]])
    m = torch.arange(2 * 4).float().reshape(2, 4, 1, 1).expand(2, 4, 3, 3)
    (sel,) = select_by_iou(iou, m)
    assert sel[:, 0, 0].tolist() == [1.0, 4.0]


# --- tokens, prompts, schedule ----------------------------------------------------------------------


def test_token_slicing():
    torch.manual_seed(0)
    dec = MaskDecoder(32, TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64, num_heads=2)).eval()
    emb, pe = torch.randn(1, 32, 4, 4), torch.randn(1, 32, 4, 4)
    sparse, dense = torch.randn(2, 3, 32), torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        full, full_iou = dec.predict_masks(emb, pe, sparse, dense)
        for k, sl in ((4, slice(0, 4)), (3, slice(1, 4)), (1, slice(0, 1))):
            m, iou = dec(emb, pe, sparse, dense, num_multimask_outputs=k)
            assert m.shape[1] == k and torch.equal(m, full[:, sl]) and torch.equal(iou, full_iou[:, sl])
    with pytest.raises(ValueError):
        dec(emb, pe, sparse, dense, num_multimask_outputs=2)


def test_prompt_subsampling_with_replacement():
    assert subsample_prompts(5, 16).tolist() == [0, 1, 2, 3, 4]
    g = torch.Generator().manual_seed(0)
    draws = [subsample_prompts(40, 16, g) for _ in range(50)]
    assert all(d.shape == (16,) and int(d.min()) >= 0 and int(d.max()) < 40 for d in draws)
    assert any(len(set(d.tolist())) < 16 for d in draws)  # with replacement: repeats happen
    assert subsample_prompts(16, 16).tolist() == list(range(16))


def test_lr_scaling_and_schedule_phase1():
    assert scaled_lr(0.1, 64) == pytest.approx(1.25e-2)
    opt = Phase1Config.model_fields["optim"].default_factory()
    opt = opt.model_copy(update={"batch_size": 8})
    sch = make_schedule(opt, iters_per_epoch=100, world_size=8)  # batch 64, 10 epochs
    assert sch.peak == pytest.approx(1.25e-2) and sch.warmup_init == pytest.approx(6.25e-8)
    assert sch.floor == pytest.approx(6.25e-7) and sch.warmup_iters == 500 and sch.total_iters == 1000
    assert sch(0) == pytest.approx(6.25e-8)
    assert sch(250) == pytest.approx(6.25e-8 + 250 * (1.25e-2 - 6.25e-8) / 500)
    assert sch(499) == pytest.approx(1.25e-2, rel=3e-3)  # the warm-up peak
    mid = 6.25e-7 + 0.5 * (1.25e-2 - 6.25e-7)
    assert sch(500) == pytest.approx(mid)  # the quirk: t not shifted → drops to the cosine midpoint
    assert sch(1000) == pytest.approx(6.25e-7)


def test_lr_phase2_values():
    opt = Phase2Config.model_fields["optim"].default_factory()
    sch = make_schedule(opt, iters_per_epoch=10, world_size=8)  # 2 images x 8 GPUs = 16
    assert sch.peak == pytest.approx(1e-4) and sch.floor == pytest.approx(1e-5) and sch.warmup_iters == 0
    assert sch(0) == pytest.approx(1e-4) and sch(50) == pytest.approx(1e-5)
    unscaled = make_schedule(opt.model_copy(update={"linear_scaling": False}), 10)
    assert unscaled.peak == pytest.approx(3.2e-3)


def test_no_weight_decay_on_1d_and_bias():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Conv2d(4, 4, 1))
    decay, no_decay = param_groups(m, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[2].weight)}
    assert len(no_decay["params"]) == 4  # linear bias, LN weight + bias, conv bias


def test_optim_config_defaults_are_the_recipe():
    p1 = Phase1Config.model_fields["optim"].default_factory()
    p2 = Phase2Config.model_fields["optim"].default_factory()
    assert (p1.epochs, p1.batch_size, p1.base_lr, p1.warmup_epochs, p1.weight_decay, p1.clip_grad) == (
        10, 8, 0.1, 5, 0.01, 5.0,
    )  # fmt: skip
    assert (p2.epochs, p2.batch_size, p2.base_lr, p2.min_lr, p2.weight_decay, p2.clip_grad) == (
        5, 2, 3.2e-3, 3.2e-4, 0.05, 0.01,
    )  # fmt: skip
    f = Phase2Config.model_fields
    assert (f["max_prompts"].default, f["decode_iters"].default, f["multimask_output"].default) == (16, 2, 4)
    assert (f["bce_weight"].default, f["dice_weight"].default, f["box_prob"].default) == (5.0, 5.0, 0.5)
    assert isinstance(p1, OptimConfig)


def test_stability_score_known_value():
    logits = torch.tensor([[2.0, 0.5, -0.5, -2.0]]).reshape(1, 2, 2)
    # > +1: 1 pixel; > -1: 3 pixels
    assert float(stability_score(logits)) == pytest.approx(1 / 3)
