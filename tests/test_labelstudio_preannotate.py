"""Pre-annotation without waiting: a context-less /predict answers at once from the result store,
automatic masks and masks from the task's own boxes/keypoints are computed in the background (single
flight) and reach Label Studio through ``POST /api/predictions`` (a fake Label Studio records them);
outputs on brush, bitmask, polygon and rectangle controls; the persistent embedding store behind the
RAM cache (hit after a restart, no encoder run)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgesam_backend.formats.labelstudio import coords
from edgesam_backend.formats.labelstudio.rle import rle_to_mask
from edgesam_backend.labelstudio.app import create_app
from edgesam_backend.labelstudio.images import ImageFetcher
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.image import load_image

from .conftest import IMAGES
from .helpers import LS_CONFIG, CountingPredictor, ls_keypoint, ls_rectangle

AMG = {"amg_points_per_side": 4, "amg_stability_score_thresh": 0.0, "amg_pred_iou_thresh": 0.0}
IMAGE = "/data/local-files/?d=images/1.jpeg"
W, H = 640, 428

#: detector boxes come in on a non-smart RectangleLabels (also an output: the mask's tight box);
#: masks go to a brush, a bitmask and polygons; "car" maps by predicted_values, "person" by label_map
MULTI = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="det" toName="image">
    <Label value="car"/><Label value="person"/><Label value="Vehicle"/><Label value="Human"/>
  </RectangleLabels>
  <BrushLabels name="brush" toName="image">
    <Label value="Vehicle" predicted_values="car,truck"/><Label value="Human"/>
  </BrushLabels>
  <BitmaskLabels name="bits" toName="image"><Label value="Vehicle"/><Label value="Human"/></BitmaskLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Vehicle"/><Label value="Human"/></PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Human" smart="true"/></KeyPointLabels>
</View>"""


class FakeLS:
    """Label Studio's image and prediction endpoints; records stored predictions."""

    def __init__(self) -> None:
        self.posted: list[dict] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Token tok":
            return httpx.Response(401)
        if request.method == "POST" and request.url.path == "/api/predictions/":
            with self.lock:
                self.posted.append(json.loads(request.content))
                return httpx.Response(201, json={"id": len(self.posted)})
        return httpx.Response(404)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ls-files")
    (root / "images").mkdir()
    (root / "images" / "1.jpeg").write_bytes((IMAGES / "1.jpeg").read_bytes())
    return root


def _app(files: Path, predictor, fake: FakeLS, **kw):
    s = Settings.from_env(
        {},
        label_studio_url="http://ls.test",
        label_studio_api_key="tok",
        local_files_document_root=files,
        **{**AMG, **kw},
    )
    return create_app(
        s,
        predictor,
        model_version="edgesam-pre",
        fetcher=ImageFetcher(s, transport=httpx.MockTransport(fake)),
    )


def _body(tasks: list[dict], config: str = LS_CONFIG, project: str = "1.1") -> dict:
    return {"tasks": tasks, "project": project, "label_config": config, "params": {"context": None}}


def _wait_posted(fake: FakeLS, n: int, backend, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (len(fake.posted) < n or backend.preannotator.pending) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def emb1(onnx_predictor):
    return onnx_predictor.encode(load_image(IMAGES / "1.jpeg"))


def test_default_mode_task_without_prompts_gets_nothing_and_no_job(files, onnx_predictor) -> None:
    fake = FakeLS()
    with TestClient(_app(files, onnx_predictor, fake)) as c:
        t0 = time.perf_counter()
        r = c.post("/predict", json=_body([{"id": 1, "data": {"image": IMAGE}}]))
        assert time.perf_counter() - t0 < 1.0
        assert r.json() == {"results": [[]]}
        backend = c.app.state.backend
        assert backend.preannotator.pending == 0 and len(backend.cache) == 0  # nothing computed
        assert c.app.state.settings.preannotate == "from-prompts"


def test_automatic_in_background_single_flight_and_posted_once(files, onnx_predictor, emb1) -> None:
    slow = CountingPredictor(onnx_predictor, delay=0.5)
    fake = FakeLS()
    with TestClient(_app(files, slow, fake, preannotate="automatic")) as c:
        backend = c.app.state.backend
        task = {"id": 7, "data": {"image": IMAGE}}
        # Label Studio sends the open-time request twice at the same moment: both answer at once
        times, answers = [], []

        def open_task() -> None:
            t0 = time.perf_counter()
            answers.append(c.post("/predict", json=_body([task])).json())
            times.append(time.perf_counter() - t0)

        threads = [threading.Thread(target=open_task) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == [{"results": [[]]}] * 2 and max(times) < 0.5, times
        _wait_posted(fake, 1, backend)
        time.sleep(0.3)
        assert len(fake.posted) == 1 and slow.calls == 1  # one computation, one stored prediction
        (post,) = fake.posted
        assert post["task"] == 7 and post["model_version"] == "edgesam-pre"
        want = AutomaticMaskGenerator(
            onnx_predictor, points_per_side=4, stability_score_thresh=0.0, pred_iou_thresh=0.0
        ).generate(emb1)
        assert len(post["result"]) == len(want) >= 1
        for region, rec in zip(post["result"], want, strict=True):
            assert np.array_equal(rle_to_mask(region["value"]["rle"], H, W) == 255, rec["segmentation"])
        # handed over: a later open (or "Retrieve Predictions") stores nothing more
        assert c.post("/predict", json=_body([task])).json() == {"results": [[]]}
        # another task with the same image shares the stored result, answered at once
        r = c.post("/predict", json=_body([{"id": 8, "data": {"image": IMAGE}}])).json()["results"][0]
        assert r["result"] == post["result"] and slow.calls == 1
        assert 'edgesam_preannotations_total{outcome="posted"} 1' in c.get("/metrics").text


def test_mode_none_and_per_project_override(files, onnx_predictor) -> None:
    fake = FakeLS()
    with TestClient(_app(files, onnx_predictor, fake, preannotate="automatic")) as c:
        r = c.post(
            "/setup", json={"project": "5.1", "schema": LS_CONFIG, "extra_params": {"preannotate": "none"}}
        )
        assert r.status_code == 200
        assert c.post(
            "/predict", json=_body([{"id": 1, "data": {"image": IMAGE}}], project="5.1")
        ).json() == {"results": [[]]}
        assert c.app.state.backend.preannotator.pending == 0
        r = c.post(
            "/setup", json={"project": "6.1", "schema": LS_CONFIG, "extra_params": {"preannotate": "x"}}
        )
        assert r.status_code == 400 and "preannotate" in r.json()["detail"]


def _det(x, y, bw, bh, label):
    r = ls_rectangle(x, y, bw, bh, w=W, h=H, label=label)
    r.update(from_name="det", to_name="image")
    return r


def test_from_prompts_boxes_and_keypoints_to_masks_on_every_output(files, onnx_predictor, emb1) -> None:
    from edgesam_backend.formats.labelstudio.regions import mask_box

    fake = FakeLS()
    with TestClient(_app(files, onnx_predictor, fake, preannotate_wait=60)) as c:
        r = c.post(
            "/setup",
            json={"project": "3.1", "schema": MULTI, "extra_params": {"label_map": {"person": "Human"}}},
        )
        assert r.status_code == 200
        kp = ls_keypoint(43.773, 45.807, None, w=W, h=H, label="person", labelled=True)
        kp.update(from_name="kp", to_name="image")
        task = {
            "id": 21,
            "data": {"image": IMAGE},
            "predictions": [
                {"model_version": "yolo", "result": [_det(24.1, 30.4, 44.9, 39.1, "car"), kp]},
                {"model_version": "edgesam-pre", "result": [_det(1, 1, 5, 5, "car")]},  # ours: ignored
            ],
            "annotations": [
                {"was_cancelled": False, "result": [_det(24.1, 30.4, 44.9, 39.1, "car")]},  # duplicate
                {"was_cancelled": True, "result": [_det(50, 50, 10, 10, "car")]},
                {"result": [_det(60, 60, 10, 10, "bicycle")]},  # maps to nothing: skipped
            ],
        }
        pred = c.post("/predict", json=_body([task], config=MULTI, project="3.1")).json()["results"][0]
        regions = pred["result"]
        by = {}
        for g in regions:
            by.setdefault(g["from_name"], []).append(g)
        assert sorted(by) == ["bits", "brush", "det", "poly"] and len(by["brush"]) == 2
        box = coords.percent_to_pixels([[24.1, 30.4], [24.1 + 44.9, 30.4 + 39.1]], W, H).reshape(-1)
        want_car = onnx_predictor.predict(box=box, num_multimask_outputs=1, embedding=emb1).masks[0]
        pts = coords.percent_to_pixels([[43.773, 45.807]], W, H)
        p1 = onnx_predictor.predict(pts, [1], num_multimask_outputs=3, embedding=emb1)
        want_kp = p1.masks[p1.best("stability")]
        for g, want, label in zip(by["brush"], [want_car, want_kp], ["Vehicle", "Human"], strict=True):
            assert g["value"]["brushlabels"] == [label]
            assert np.array_equal(rle_to_mask(g["value"]["rle"], H, W) == 255, want)
        for g, want in zip(by["bits"], [want_car, want_kp], strict=True):
            url = g["value"]["imageDataURL"]
            assert url.startswith("data:image/png;base64,")
            png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            assert png.mode == "RGBA" and png.size == (W, H)
            assert np.array_equal(np.asarray(png)[..., 3] == 255, want)
        for g, want, label in zip(by["det"], [want_car, want_kp], ["Vehicle", "Human"], strict=True):
            x0, y0, x1, y1 = mask_box(want)
            v = g["value"]
            assert v["rectanglelabels"] == [label]
            assert v["x"] == pytest.approx(100 * x0 / W, abs=1e-5)
            assert v["width"] == pytest.approx(100 * (x1 - x0) / W, abs=1e-5)
            assert v["y"] == pytest.approx(100 * y0 / H, abs=1e-5)
            assert v["height"] == pytest.approx(100 * (y1 - y0) / H, abs=1e-5)
        assert {p["value"]["polygonlabels"][0] for p in by["poly"]} == {"Vehicle", "Human"}
        # answered in the response (waited): nothing more goes through the API
        time.sleep(0.2)
        assert fake.posted == []


def test_webhook_tasks_created_preannotates_through_the_api(files, onnx_predictor) -> None:
    fake = FakeLS()
    with TestClient(_app(files, onnx_predictor, fake)) as c:
        task = {
            "id": 31,
            "data": {"image": IMAGE},
            "predictions": [{"result": [_det(24, 30, 45, 39, "car")]}],
        }
        t0 = time.perf_counter()
        r = c.post(
            "/webhook",
            json={"action": "TASKS_CREATED", "project": {"id": 4, "label_config": MULTI}, "tasks": [task]},
        )
        assert time.perf_counter() - t0 < 1.0 and r.json()["preannotate_queued"] == 1
        _wait_posted(fake, 1, c.app.state.backend)
        (post,) = fake.posted
        assert post["task"] == 31 and {g["from_name"] for g in post["result"]} == {
            "brush",
            "bits",
            "poly",
            "det",
        }
        assert all(g["value"].get(g["type"]) == ["Vehicle"] for g in post["result"])


def test_persistent_store_hit_after_restart(files, onnx_predictor, tmp_path: Path) -> None:
    store = tmp_path / "store"
    click = {
        "tasks": [{"id": 1, "data": {"image": IMAGE}}],
        "project": "1.1",
        "label_config": LS_CONFIG,
        "params": {"context": {"result": [ls_keypoint(43.773, 45.807, True, w=W, h=H, labelled=True)]}},
    }
    masks = []
    for run in range(2):  # the second app is a restart: empty RAM cache, same store folder
        counting = CountingPredictor(onnx_predictor)
        with TestClient(_app(files, counting, FakeLS(), embedding_store=store)) as c:
            r = c.post("/predict", json=click)
            assert r.status_code == 200, r.text
            masks.append(r.json()["results"][0]["result"][0]["value"]["rle"])
            assert counting.calls == (1 if run == 0 else 0)
            text = c.get("/metrics").text
            assert f'edgesam_embedding_store_total{{outcome="{"miss" if run == 0 else "hit"}"}} 1' in text
    assert masks[0] == masks[1]
    assert len(list(store.glob("*/*/*.emb"))) == 1
