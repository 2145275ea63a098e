"""Region proposal module: head shapes, target assignment, losses, decoding, the granularity prior,
export with proposals, checkpoints with/without RPN weights, and a short training run that learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesam_backend.model.checkpoint import load_edge_sam
from edgesam_backend.model.edge_sam import build_edge_sam
from edgesam_backend.runtime.base import ImageEmbedding
from edgesam_backend.runtime.boxes import box_iou, nms
from edgesam_backend.runtime.proposals import (
    Proposals,
    box_for_point,
    decode_proposals,
    level_shapes,
    location_points,
)
from edgesam_backend.training.losses import giou_loss, sigmoid_focal
from edgesam_backend.training.rpn import (
    RpnTrainConfig,
    assign_targets,
    lr_at,
    train_rpn,
)
from edgesam_backend.training.synthetic import make_image, write_coco_dataset

from .conftest import CHECKPOINT, requires_shared


@pytest.mark.parametrize("size", [256, 1024])
def test_head_output_matches_location_grid(size):
    model = build_edge_sam(with_rpn=True)
    with torch.inference_mode():
        _, stages = model.image_encoder.forward_with_stages(torch.zeros(1, 3, size, size))
        logits, ltrb = model.rpn_head(stages)
        flat_l, flat_b = model.rpn_head.flatten(logits, ltrb)
    assert [tuple(x.shape[-2:]) for x in logits] == level_shapes(size)
    pts, strides = location_points(size)
    assert flat_l.shape == (1, pts.shape[0]) and flat_b.shape == (1, pts.shape[0], 4)
    assert set(np.unique(strides).tolist()) == {8.0, 16.0, 32.0, 64.0}


def test_rpn_is_small():
    model = build_edge_sam(with_rpn=True)
    rpn = sum(p.numel() for p in model.rpn_head.parameters())
    enc = sum(p.numel() for p in model.image_encoder.parameters())
    assert rpn < 0.05 * enc


def test_assign_targets_centre_sampling_and_levels():
    pts, strides = (torch.from_numpy(a) for a in location_points(256))
    gt = torch.tensor([[100.0, 100.0, 140.0, 140.0]])  # 40 px box → P3 (stride 8)
    labels, targets = assign_targets(pts, strides, gt, center_radius=1.5)
    pos = labels.nonzero().flatten()
    assert len(pos) > 0
    assert torch.all(strides[pos] == 8)
    assert torch.all((pts[pos] - 120).abs() < 12)  # within 1.5 strides of the centre
    boxes = torch.cat([pts[pos] - targets[pos, :2], pts[pos] + targets[pos, 2:]], dim=1)
    torch.testing.assert_close(boxes, gt.expand(len(pos), 4))
    pts, strides = (torch.from_numpy(a) for a in location_points(1024))
    big = torch.tensor([[100.0, 100.0, 500.0, 500.0]])  # 400 px: max distances ≥ 200 → P5/P6 only
    labels, _ = assign_targets(pts, strides, big)
    assert labels.any() and torch.all(strides[labels] >= 32)
    empty, _ = assign_targets(pts, strides, torch.zeros(0, 4))
    assert not empty.any()


def test_losses_known_values():
    t = torch.tensor([[10.0, 5.0, 3.0, 8.0]])
    assert float(giou_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(giou_loss(t, t * 2)) > 0.5
    logits = torch.tensor([0.0, 0.0])
    labels = torch.tensor([True, False])
    # p = 0.5: ce = ln 2, (1-pt)^2 = 0.25; alpha 0.25 / 0.75
    expected = (0.25 + 0.75) * 0.25 * np.log(2)
    assert float(sigmoid_focal(logits, labels, 0.25, 2.0).sum()) == pytest.approx(expected, rel=1e-6)


def test_lr_schedule():
    cfg = RpnTrainConfig(
        train_images=".",
        train_annotations="a.json",
        output_dir=".",
        max_steps=100,
        warmup_steps=10,
        lr=1.0,
        min_lr_ratio=0.0,
    )
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5)
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-12)


def test_nms_and_iou():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    assert box_iou(boxes[:1], boxes[1:2])[0, 0] == pytest.approx(81 / 100)
    assert nms(boxes, scores, 0.7).tolist() == [3, 2]
    assert nms(boxes, scores, 0.95).tolist() == [3, 0, 1, 2]


def test_decode_proposals_places_boxes_in_original_frame():
    pts, _ = location_points(1024)
    logits = np.full((1, pts.shape[0]), -10.0, np.float32)
    ltrb = np.full((1, pts.shape[0], 4), 4.0, np.float32)
    i = int(np.argmin(np.abs(pts - [300, 200]).sum(1)))  # a P3 location at (300, 200)... nearest
    logits[0, i] = 5.0
    ltrb[0, i] = [50, 40, 70, 60]
    props = decode_proposals(logits, ltrb, (512, 1024), (1024, 2048))  # original is 2x the input
    assert len(props) == 1
    cx, cy = pts[i]
    np.testing.assert_allclose(props.boxes[0], np.array([cx - 50, cy - 40, cx + 70, cy + 60]) * 2, rtol=1e-5)
    assert props.scores[0] == pytest.approx(1 / (1 + np.exp(-5.0)))


def test_box_for_point_rule():
    boxes = np.array(
        [
            [0, 0, 100, 100],
            [40, 40, 60, 60],
            [45, 45, 58, 58],
            [0, 0, 10, 10],
            [30, 30, 90, 90],
            [41, 41, 70, 70],
            [42, 42, 62, 62],
            [10, 10, 95, 95],
        ],
        np.float32,
    )
    scores = np.array([0.99, 0.5, 0.6, 0.9, 0.7, 0.4, 0.3, 0.2], np.float32)
    props = Proposals(boxes, scores)
    box, score = box_for_point(props, (50, 50), k=5)
    # containing boxes: 0,1,2,4,5,6,7; the 5 nearest centres: 1 (50,50), 2 (51.5), 6 (52), 0 (50,50), 7 (52.5)
    # → highest score among them is box 0
    np.testing.assert_array_equal(box, boxes[0])
    assert score == pytest.approx(0.99)
    # at (51.5, 51.5) the two nearest centres are boxes 2 (0.6) and 6 (0.3): box 0 (0.99) is too far
    box, score = box_for_point(props, (51.5, 51.5), k=2)
    np.testing.assert_array_equal(box, boxes[2])
    assert score == pytest.approx(0.6)
    assert box_for_point(props, (150, 5), k=5) == (None, 0.0)


@requires_shared
def test_checkpoints_with_and_without_rpn(tmp_path):
    official = load_edge_sam(CHECKPOINT)
    assert official.rpn_head is None
    with_rpn = load_edge_sam(CHECKPOINT, with_rpn=True)  # official weights + untrained head
    assert with_rpn.rpn_head is not None
    path = tmp_path / "rpn.pth"
    torch.save(with_rpn.state_dict(), path)
    again = load_edge_sam(path)  # auto-detected
    assert again.rpn_head is not None
    for k, v in with_rpn.rpn_head.state_dict().items():
        assert torch.equal(v, again.rpn_head.state_dict()[k])
    plain = load_edge_sam(path, with_rpn=False)  # RPN keys are skipped, the rest loads strictly
    assert plain.rpn_head is None


@requires_shared
def test_export_with_proposals_and_granularity_prior(tmp_path):
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.model.predictor import TorchPredictor
    from edgesam_backend.runtime.image import load_image
    from edgesam_backend.runtime.predictor import OnnxPredictor

    from .conftest import IMAGES

    torch.manual_seed(0)
    model = load_edge_sam(CHECKPOINT, with_rpn=True)
    with torch.no_grad():  # make the untrained head confident somewhere so proposals exist
        model.rpn_head.cls.bias.fill_(2.0)
    res = export_onnx(model, tmp_path)
    assert res.encoder_max_abs_diff < 1e-4
    op = OnnxPredictor(tmp_path / "encoder.onnx", tmp_path / "decoder.onnx")
    tp = TorchPredictor(model)
    assert op.has_proposals
    image = load_image(IMAGES / "1.jpeg")
    oe = op.encode(image)
    assert len(oe.proposals) > 10
    from edgesam_backend.runtime.transforms import preprocess

    x, _ = preprocess(image)
    o_raw, t_raw = op._encode_outputs(x), tp._encode_outputs(x)
    np.testing.assert_allclose(o_raw["proposal_logits"], t_raw["proposal_logits"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(o_raw["proposal_ltrb"], t_raw["proposal_ltrb"], rtol=1e-4, atol=1e-3)

    # proposal-prompted everything mode: top-K after NMS as box prompts, ceil(K / batch) decoder calls
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator

    amg = AutomaticMaskGenerator(op, points_per_batch=16, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records, stats = amg.generate_from_proposals(oe, top_k=20, return_stats=True)
    top = oe.proposals.top(20, 0.7)
    assert stats["prompts"] == len(top) and stats["decoder_calls"] == -(-len(top) // 16)
    assert 0 < len(records) <= len(top)
    assert all(r["segmentation"].shape == image.shape[:2] for r in records)
    plain = build_edge_sam()
    with pytest.raises(ValueError, match="no region proposal head"):
        AutomaticMaskGenerator(TorchPredictor(plain)).generate_from_proposals(image)

    point = (320.0, 200.0)
    box, _ = box_for_point(oe.proposals, point)
    assert box is not None
    prior = op.predict([point], [1], granularity_prior=True, embedding=oe)
    explicit = op.predict([point], [1], box=box, num_multimask_outputs=1, embedding=oe)
    assert prior.masks.shape == (1, *image.shape[:2])
    np.testing.assert_array_equal(prior.low_res_logits, explicit.low_res_logits)

    # no proposal contains the point → two not-a-point box tokens instead of the padding point
    empty = ImageEmbedding(
        oe.embeddings,
        oe.original_hw,
        oe.input_hw,
        Proposals(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)),
    )
    ext = op.predict([point], [1], granularity_prior=True, embedding=empty)
    plain = op.predict([point], [1], num_multimask_outputs=1, embedding=empty)
    assert np.abs(ext.low_res_logits - plain.low_res_logits).max() > 1e-3
    c = np.array([[[*op_coords(point, oe)], [0, 0], [0, 0]]], np.float32)
    lab = np.array([[1, -1, -1]], np.float32)
    low, _, _ = op.predict_low_res(c, lab, embedding=empty)
    np.testing.assert_array_equal(ext.low_res_logits[0], low[0, 0])


def op_coords(point, emb):
    from edgesam_backend.runtime.transforms import apply_coords

    return apply_coords([point], emb.original_hw)[0]


def test_synthetic_images_have_consistent_annotations(tmp_path):
    rng = np.random.default_rng(3)
    for _ in range(5):
        s = make_image(rng, 128, 160)
        assert s.image.shape == (128, 160, 3)
        for m, b in zip(s.masks, s.boxes, strict=True):
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == b.tolist()
        if len(s.masks) > 1:
            assert not np.any(s.masks.sum(0) > 1)  # visible masks never overlap
    path = write_coco_dataset(tmp_path, 3, size=(96, 128), seed=0)
    from pycocotools import mask as mask_utils

    coco = json.loads(path.read_text())
    assert len(coco["images"]) == 3
    for a in coco["annotations"]:
        m = mask_utils.decode(a["segmentation"])
        assert m.shape == (96, 128) and int(m.sum()) == a["area"]


@pytest.mark.slow
def test_short_training_learns_and_resumes(tmp_path):
    """Loss falls and held-out recall beats the untrained head; resume continues from the checkpoint."""
    from edgesam_backend.training.rpn import CocoBoxes, evaluate_recall

    write_coco_dataset(tmp_path / "train", 64, size=128, seed=1)
    write_coco_dataset(tmp_path / "val", 16, size=128, seed=2)
    val = CocoBoxes(tmp_path / "val" / "images", tmp_path / "val" / "annotations.json", 128)
    torch.manual_seed(0)
    before = evaluate_recall(build_edge_sam(with_rpn=True), val)
    cfg = RpnTrainConfig(
        train_images=tmp_path / "train" / "images",
        train_annotations=tmp_path / "train" / "annotations.json",
        val_images=tmp_path / "val" / "images",
        val_annotations=tmp_path / "val" / "annotations.json",
        output_dir=tmp_path / "run",
        input_size=128,
        freeze_encoder=False,
        max_steps=40,
        batch_size=4,
        lr=3e-3,
        warmup_steps=4,
        checkpoint_every=20,
        log_every=0,
        threads=2,
    )
    logs: list[str] = []
    metrics = train_rpn(cfg.model_copy(update={"max_steps": 20}), log=logs.append)
    metrics = train_rpn(cfg, log=logs.append)
    assert any("resumed" in m and "step 20" in m for m in logs)
    assert metrics["steps"] == 40
    assert metrics["loss_last"] < metrics["loss_first"]
    assert metrics["val"]["recall@0.5_K100"] > before["recall@0.5_K100"] + 0.1
    trained = load_edge_sam(tmp_path / "run" / "edge_sam_rpn.pth")  # its own input size: no argument
    assert trained.rpn_head is not None and trained.image_size == cfg.input_size


def test_train_rpn_cli_config_errors(tmp_path, capsys):
    from edgesam_backend.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train_images: x\ntrain_annotations: y.json\noutput_dir: out\nbatch_size: zero\nfoo: 1\n")
    assert main(["train-rpn", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:4:13: batch_size" in err
    assert f"{cfg}:5:6: foo: unknown key" in err


def test_train_rpn_config_env_expansion_shares_the_pipeline_rules(tmp_path, monkeypatch):
    from edgesam_backend.yamlconfig import ConfigError, load_yaml_model

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "train_images: ${DATA}/images\ntrain_annotations: a.json\noutput_dir: o\nmax_steps: ${STEPS:-7}\n"
    )
    monkeypatch.setenv("DATA", "/data")
    monkeypatch.setenv("STEPS", "")  # empty → the default, as in the shell
    c = load_yaml_model(cfg, RpnTrainConfig)
    assert str(c.train_images) == "/data/images" and c.max_steps == 7
    monkeypatch.delenv("DATA")
    with pytest.raises(ConfigError, match=rf"{cfg}:1:15: environment variable DATA is not set"):
        load_yaml_model(cfg, RpnTrainConfig)


def test_train_rpn_bf16_on_the_cpu(tmp_path, monkeypatch):
    """A few bf16 steps on the CPU through the shared loop: the forward runs under bf16 autocast, the
    losses are finite and the final checkpoint loads."""
    import edgesam_backend.training.rpn as rpn

    seen: list[tuple[str, str]] = []
    real = rpn.autocast

    def spy(device: torch.device, precision: str):
        seen.append((device.type, precision))
        return real(device, precision)

    monkeypatch.setattr(rpn, "autocast", spy)
    write_coco_dataset(tmp_path / "train", 4, size=128, seed=1)
    cfg = RpnTrainConfig(
        train_images=tmp_path / "train" / "images",
        train_annotations=tmp_path / "train" / "annotations.json",
        output_dir=tmp_path / "run",
        input_size=128,
        max_steps=3,
        batch_size=2,
        warmup_steps=1,
        log_every=0,
        threads=1,
        precision="bf16",
        device="cpu",
    )
    metrics = train_rpn(cfg, log=lambda _m: None)
    assert metrics["steps"] == 3 and metrics["world_size"] == 1
    assert seen == [("cpu", "bf16")] * 3
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(r["loss"]) for r in records)
    assert load_edge_sam(tmp_path / "run" / "edge_sam_rpn.pth").rpn_head is not None


def test_train_rpn_device_option_is_checked(tmp_path, capsys):
    from edgesam_backend.cli import main

    base = {"train_images": "x", "train_annotations": "y.json", "output_dir": str(tmp_path / "out")}
    assert RpnTrainConfig(**base, device=" CUDA:1 ").device == "cuda:1"
    assert RpnTrainConfig(**base, device="auto").device == "auto" and RpnTrainConfig(**base).device is None
    for bad in ("gpu", "cuda:x", "tensorrt"):
        with pytest.raises(ValueError, match="training runs on cpu, cuda, cuda:N or auto"):
            RpnTrainConfig(**base, device=bad)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train_images: x\ntrain_annotations: y.json\noutput_dir: out\ndevice: gpu\n")
    assert main(["train-rpn", str(cfg)]) == 2
    assert f"{cfg}:4:9: device" in capsys.readouterr().err
    if not torch.cuda.is_available():  # a CUDA device this torch cannot see: refused before any work
        with pytest.raises(ValueError, match=r"device 'cuda' .*sees 0 CUDA GPU"):
            train_rpn(RpnTrainConfig(**base, device="cuda"))
        assert not (tmp_path / "out").exists()
