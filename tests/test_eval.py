"""Evaluation protocol: centre point, IoU metric and mIoU aggregation (known values), the resize
chain of the metric, and an end-to-end report comparing a teacher and a student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgesam_backend.cli import main
from edgesam_backend.runtime.masks import center_point
from edgesam_backend.runtime.transforms import upscale_logits
from edgesam_backend.training.distill_config import EvalConfig
from edgesam_backend.training.evaluate import (
    evaluate,
    gt_views,
    logits_to_original,
    mask_iou,
    miou,
    size_bin,
)
from edgesam_backend.training.synthetic import write_coco_dataset

from .helpers import coco_data_section

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_center_point_is_farthest_from_boundary():
    m = np.zeros((20, 30), bool)
    m[5:16, 4:15] = True  # 11x11 square: centre (9, 10)
    assert center_point(m) == (9.0, 10.0)
    # an L shape: the thick part wins over the thin arm
    m = np.zeros((40, 40), bool)
    m[5:35, 5:9] = True  # thin vertical arm (4 px wide)
    m[20:35, 5:30] = True  # thick foot (15 px tall)
    x, y = center_point(m)
    assert 20 <= y < 35 and x >= 12
    # a mask touching the image edge: the border is not background (kornia's convention)
    m = np.zeros((10, 10), bool)
    m[:, :3] = True
    assert center_point(m) == (0.0, 0.0)
    with pytest.raises(ValueError):
        center_point(np.zeros((4, 4), bool))


def test_mask_iou_and_miou_known_values():
    gt = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    gt[0, :2] = True
    pred[0, :2] = True  # IoU 1
    gt[1, :, :2] = True
    pred[1, :, 1:3] = True  # inter 4, union 12 → 1/3
    ious = mask_iou(pred, gt)  # the third: both empty → NaN
    assert ious[0] == 1.0 and ious[1] == pytest.approx(1 / 3) and np.isnan(ious[2])
    assert miou(ious) == pytest.approx(100 * (1 + 1 / 3) / 2)  # NaN dropped, mean over instances
    assert miou(np.array([0.5, 0.7, 0.9, np.nan])) == pytest.approx(70.0)
    assert np.isnan(miou(np.array([np.nan])))


def test_size_bins():
    assert size_bin(0) == "small" and size_bin(32**2 - 1) == "small" and size_bin(32**2) == "medium"
    assert size_bin(96**2 - 0.5) == "medium" and size_bin(96**2) == "large"


def test_metric_resize_chain_matches_the_engine():
    rng = np.random.default_rng(0)
    low = rng.normal(size=(2, 256, 256)).astype(np.float32)
    ours = logits_to_original(torch.from_numpy(low)[:, None], 1024, (683, 1024), (1200, 1800)).numpy()
    ref = upscale_logits(low, (683, 1024), (1200, 1800))
    np.testing.assert_allclose(ours, ref, atol=2e-4)


def test_gt_views_round_trip():
    gt = torch.zeros(1, 96, 128, dtype=torch.bool)
    gt[0, 20:60, 30:90] = True
    low, back = gt_views(gt, 128, (96, 128), 32)
    assert low.shape == (1, 32, 32) and back.shape == (1, 96, 128)
    assert float(mask_iou(back, gt)[0]) > 0.95
    assert not low[0, 24:].any()  # padding rows stay empty
    assert low[0, 5:15, 8:22].all()


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    write_coco_dataset(root, 3, size=(112, 128), seed=3, max_objects=4)
    return root


def _cfg(val: Path, out: Path, **kw) -> dict:
    cfg = {
        "data": coco_data_section(val),
        "models": [
            {"name": "teacher", "type": "sam", "kind": "tiny", "seed": 0},
            {"name": "student", "type": "edge_sam", "seed": 0},
        ],
        "output": str(out),
        "image_size": 128,
    }
    cfg.update(kw)
    return cfg


def test_report_compares_teacher_and_student(val, tmp_path):
    report = evaluate(EvalConfig.model_validate(_cfg(val, tmp_path / "r.json")))
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == json.loads(json.dumps(report))
    n = len(json.loads((val / "annotations.json").read_text())["annotations"])
    assert report["num_instances"] == n and report["num_images"] == 3
    assert report["rounds"] == ["initial", "+1 pt", "+2 pt"]
    for name in ("teacher", "student"):
        for prompt in ("box", "point"):
            entry = report["models"][name][prompt]
            assert len(entry["mIoU"]) == 3 and all(0 <= v <= 100 for v in entry["mIoU"])
            assert sum(b["count"] for b in entry["by_size"].values()) == n
    d = report["comparison"]["student - teacher"]["box"]
    assert d[0] == pytest.approx(
        report["models"]["student"]["box"]["mIoU"][0] - report["models"]["teacher"]["box"]["mIoU"][0],
        abs=1e-3,
    )


def test_same_model_twice_gives_identical_numbers_and_options(val, tmp_path):
    raw = _cfg(val, tmp_path / "r.json", refine_iters=1, num_multimask_outputs=4, select="oracle")
    raw["models"] = [
        {"name": "a", "type": "sam", "kind": "tiny", "seed": 0},
        {"name": "b", "type": "sam", "kind": "tiny", "seed": 0},
    ]
    rep = evaluate(EvalConfig.model_validate(raw))
    assert rep["models"]["a"] == rep["models"]["b"]
    assert rep["comparison"]["b - a"] == {"box": [0.0, 0.0], "point": [0.0, 0.0]}
    raw["select"] = "first"
    first = evaluate(EvalConfig.model_validate(raw))
    for p in ("box", "point"):  # the oracle picks the best of 4 tokens: never worse than token 0
        assert rep["models"]["a"][p]["mIoU"][0] >= first["models"]["a"][p]["mIoU"][0] - 1e-6
    raw.update(select="first", num_multimask_outputs=1, max_instances_per_image=5, prompts=["box"])
    rep = evaluate(EvalConfig.model_validate(raw))
    assert rep["num_instances"] == 15 and "point" not in rep["models"]["a"]


def test_cli_eval(val, tmp_path, capsys):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(_cfg(val, tmp_path / "r.json", refine_iters=0, prompts=["point"])))
    assert main(["eval", str(path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["models"]) == {"teacher", "student"}
    raw = _cfg(val, tmp_path / "r.json")
    raw["models"].append({"name": "teacher", "type": "sam", "kind": "tiny"})
    path.write_text(yaml.safe_dump(raw))
    assert main(["eval", str(path)]) == 2
    assert "unique" in capsys.readouterr().err
