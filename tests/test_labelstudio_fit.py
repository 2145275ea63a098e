"""The backend learns from the project: a fit (real ``edgesam finetune`` + ``edgesam export`` child
processes) on annotated tasks, validated, hot-swapped, listed in ``/versions``, persisted across a
restart, rolled back by env and by ``extra_params``; the version registry; webhook errors.

The tasks carry their images as ``data:`` URIs, so the fit runs without a Label Studio here; the same
fit through a real Label Studio's "Start Training" is in tests/test_labelstudio_e2e.py.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgesam_backend.formats.labelstudio.results import result_mask, task_masks
from edgesam_backend.formats.labelstudio.rle import mask_to_rle
from edgesam_backend.labelstudio.app import create_app
from edgesam_backend.labelstudio.fit_data import annotated_tasks, split
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.labelstudio.versions import BASE, FitVersion, VersionError, VersionRegistry

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Shape"/></BrushLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Shape"/></RectangleLabels>
</View>"""


def _brush(mask: np.ndarray) -> dict:
    h, w = mask.shape
    return {
        "type": "brushlabels",
        "from_name": "tag",
        "to_name": "image",
        "original_height": h,
        "original_width": w,
        "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Shape"]},
    }


def _task(tid: int, rng: np.random.Generator) -> dict:
    """A 96x80 image with a bright rectangle on noise, annotated with its brush mask."""
    h, w = 80, 96
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    y0, x0 = rng.integers(5, 35), rng.integers(5, 45)
    mask = np.zeros((h, w), bool)
    mask[y0 : y0 + 30, x0 : x0 + 40] = True
    img[mask] = (230, 200, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"id": tid, "data": {"image": uri}, "annotations": [{"id": tid, "result": [_brush(mask)]}]}


def test_results_read_brush_and_polygon_masks() -> None:
    m = np.zeros((40, 50), bool)
    m[10:20, 5:30] = True
    assert np.array_equal(result_mask(_brush(m)), m)
    poly = {
        "type": "polygonlabels",
        "original_height": 40,
        "original_width": 50,
        "value": {"points": [[10, 25], [60, 25], [60, 50], [10, 50]], "polygonlabels": ["x"]},
    }
    pm = result_mask(poly)
    assert pm.shape == (40, 50) and pm[15, 15] and not pm[5, 2]
    assert result_mask({"type": "rectanglelabels", "original_height": 4, "original_width": 4}) is None
    cancelled = {"annotations": [{"was_cancelled": True, "result": [_brush(m)]}, {"result": []}]}
    assert task_masks(cancelled) == []


def test_annotated_tasks_and_held_out_split() -> None:
    rng = np.random.default_rng(0)
    tasks = [_task(i, rng) for i in (7, 3, 5)] + [{"id": 9, "data": {"image": "x"}, "annotations": []}]
    kept = annotated_tasks(tasks, "image")
    assert [t["id"] for t in kept] == [3, 5, 7]
    train, held, separate = split(kept)
    assert not separate and held == train  # < 5 tasks: validated on the training tasks
    many = [{"id": i} for i in range(11)]
    train, held, separate = split(many)
    assert separate and [t["id"] for t in held] == [4, 9] and len(train) == 9


def test_version_registry_persists_and_rejects_unknown(tmp_path: Path) -> None:
    reg = VersionRegistry(tmp_path, "edgesam-base")
    assert reg.names() == ["edgesam-base"] and reg.active == BASE
    (tmp_path / "v1").mkdir()
    reg.add(FitVersion("edgesam-v1", str(tmp_path / "v1"), "ck.pth", "edgesam-base", 3))
    again = VersionRegistry(tmp_path, "edgesam-base")
    assert again.active == "edgesam-v1" and again.names() == ["edgesam-base", "edgesam-v1"]
    again.activate("base")
    assert VersionRegistry(tmp_path, "edgesam-base").active == BASE
    with pytest.raises(VersionError, match="edgesam-v1"):
        again.get("edgesam-nope")


def _settings(tmp_path: Path, onnx: Path, **kw) -> Settings:
    base = {
        "onnx_dir": onnx,
        "train_dir": tmp_path / "fits",
        "train_steps": 4,
        "train_threads": 1,
        "intra_op_threads": 1,
        "train_max_drop": 100.0,
    }
    return Settings.from_env({}, **{**base, **kw})


def test_fit_swaps_serves_persists_and_rolls_back(tmp_path: Path, small_edgesam) -> None:
    ckpt, onnx = small_edgesam
    rng = np.random.default_rng(1)
    tasks = [_task(i, rng) for i in range(1, 4)]
    settings = _settings(tmp_path, onnx, train_init=str(ckpt))
    with TestClient(create_app(settings)) as client:
        backend = client.app.state.backend
        base = backend.model_version
        job = backend.fits.run_sync(1, tasks, "image")
        assert job.state == "done", job.message
        assert job.step == 4 and job.max_steps == 4 and job.loss is not None
        assert job.metrics["held_out_after"]["instances"] == 3 and not job.metrics["held_out_separate"]
        new = job.version
        assert new != base and client.get("/versions").json()["versions"] == [base, new]
        assert client.get("/health").json()["model_version"] == new
        metrics = client.get("/metrics").text
        assert 'edgesam_training_total{outcome="swapped"} 1' in metrics
        assert "edgesam_training_step 4" in metrics
        # a click is answered by the new version
        body = {
            "tasks": [tasks[0]],
            "label_config": CONFIG,
            "params": {"context": {"result": [_box(20, 20, 40, 40)]}},
        }
        r = client.post("/predict", json=body)
        assert r.status_code == 200 and r.json()["results"][0]["model_version"] == new
        # freeze: encoder (the default) keeps the encoder file: the embedding cache is shared
        assert backend.serving.encoder_id == backend._base.encoder_id
        # rollback through extra_params (Label Studio's model settings), then forward again
        setup = {"project": "1.1", "schema": CONFIG, "extra_params": {"model_version": "base"}}
        assert client.post("/setup", json=setup).json()["model_version"] == base
        setup["extra_params"] = {"model_version": "edgesam-unknown"}
        r = client.post("/setup", json=setup)
        assert r.status_code == 422 and new in r.json()["detail"]
        setup["extra_params"] = {"model_version": new}
        assert client.post("/setup", json=setup).json()["model_version"] == new
        fit_json = json.loads((tmp_path / "fits" / "versions" / new / "fit.json").read_text())
        assert fit_json["held_out_after"]["miou_box"] is not None
    # a restart serves the fitted version; EDGESAM_SERVE_VERSION=base rolls back
    with TestClient(create_app(_settings(tmp_path, onnx, train_init=str(ckpt)))) as client:
        assert client.get("/health").json()["model_version"] == new
    with TestClient(create_app(_settings(tmp_path, onnx, serve_version="base"))) as client:
        assert client.get("/health").json()["model_version"] == base
        assert client.get("/versions").json()["versions"] == [base, new]


def _box(x: float, y: float, w: float, h: float) -> dict:
    return {
        "type": "rectanglelabels",
        "from_name": "rect",
        "to_name": "image",
        "original_width": 96,
        "original_height": 80,
        "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": ["Shape"]},
    }


def test_start_training_errors_are_clear(tmp_path: Path, small_edgesam) -> None:
    _, onnx = small_edgesam
    with TestClient(create_app(_settings(tmp_path, onnx))) as client:
        r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert r.status_code == 422 and "LABEL_STUDIO_URL" in r.json()["detail"]
    s = _settings(tmp_path, onnx, label_studio_url="http://127.0.0.1:9", label_studio_api_key="k")
    with TestClient(create_app(s)) as client:
        r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
        assert r.status_code == 422 and "EDGESAM_TRAIN_INIT" in r.json()["detail"]
        r = client.post("/webhook", json={"action": "START_TRAINING"})
        assert r.status_code == 422 and "project" in r.json()["detail"]


def test_fit_that_hurts_is_rejected_and_nothing_changes(tmp_path: Path, small_edgesam) -> None:
    """A fit whose held-out box mIoU drops more than EDGESAM_TRAIN_MAX_DROP is not served: the job
    says why, the served version, /versions and the version folder stay as they were."""
    ckpt, onnx = small_edgesam
    rng = np.random.default_rng(1)
    tasks = [_task(i, rng) for i in range(1, 4)]
    # lr 0.05 on the whole model for 4 steps wrecks it (a sure drop on the held-out masks) while the
    # logits stay small enough for the export parity check (lr 1.0 fails there, a different path)
    settings = _settings(
        tmp_path, onnx, train_init=str(ckpt), train_lr=0.05, train_freeze="none", train_max_drop=0.5
    )
    with TestClient(create_app(settings)) as client:
        backend = client.app.state.backend
        base = backend.model_version
        job = backend.fits.run_sync(1, tasks, "image")
        before = job.metrics["held_out_before"]["miou_box"]
        after = job.metrics["held_out_after"]["miou_box"]
        assert before - after > 0.5, job.metrics  # the premise: this fit made the model worse
        assert job.state == "rejected", job.message
        assert "EDGESAM_TRAIN_MAX_DROP=0.5" in job.message and f"still serving {base}" in job.message
        assert client.get("/health").json()["model_version"] == base
        assert client.get("/versions").json()["versions"] == [base]
        assert 'edgesam_training_total{outcome="rejected"} 1' in client.get("/metrics").text
        assert not (tmp_path / "fits" / "versions").is_dir() or not any(
            (tmp_path / "fits" / "versions").iterdir()
        )
    # a restart still serves the base model (nothing was registered)
    with TestClient(create_app(_settings(tmp_path, onnx, train_init=str(ckpt)))) as client:
        assert client.get("/health").json()["model_version"] == base
