"""End to end with a real Label Studio 1.23.2 (installed from PyPI into its own venv, see
tests/e2e_labelstudio/ls_server.py): project, two tasks (an uploaded photo and an EXIF-rotated photo
served by local storage), this backend registered over HTTP, interactive clicks (± keypoints, a
rectangle) through ``/api/ml/{id}/interactive-annotating``, batch predictions through the Data Manager
action. Every returned or stored mask must decode — with our decoder and with Label Studio's sdk — to
the image's size and be pixel-identical to what the predictor returns directly for the same prompt in
pixel coordinates (percent → pixels with the same float conversion, EXIF applied).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from edgesam_backend.formats.labelstudio import coords
from edgesam_backend.formats.labelstudio.rle import rle_to_mask
from edgesam_backend.runtime.image import load_image

from .conftest import IMAGES
from .e2e_labelstudio import ls_server
from .e2e_labelstudio.sdk import sdk_decode, sdk_encode
from .helpers import (
    LS_CONFIG,
    free_port,
    ls_connect_backend,
    ls_create_project,
    ls_keypoint,
    ls_rectangle,
)

pytestmark = pytest.mark.slow

#: a detector's boxes on a non-smart RectangleLabels; masks to a brush; "car" maps by predicted_values
DETECTOR_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="det" toName="image">
    <Label value="car"/><Label value="person"/><Label value="Vehicle"/><Label value="Human"/>
  </RectangleLabels>
  <BrushLabels name="tag" toName="image">
    <Label value="Vehicle" predicted_values="car,truck"/><Label value="Human"/>
  </BrushLabels>
</View>"""

AMG = {"points_per_side": 4, "stability_score_thresh": 0.0, "pred_iou_thresh": 0.0, "box_nms_thresh": 0.7}


def test_rle_matches_label_studio_sdk(ls_venv: Path, tmp_path: Path) -> None:
    """Our encoder vs the sdk's ``mask2rle`` (byte-identical) and its ``decode_rle`` (both ways)."""
    from edgesam_backend.formats.labelstudio.rle import mask_to_rle

    rng = np.random.default_rng(0)
    masks = {
        "blob": np.zeros((480, 640), bool),
        "noise": rng.random((97, 131)) > 0.7,
        "full": np.ones((300, 200), bool),
        "empty": np.zeros((64, 48), bool),
        "tiny": np.array([[True]]),
    }
    masks["blob"][140:300, 200:360] = True
    ours = {k: mask_to_rle(m) for k, m in masks.items()}
    theirs = sdk_encode(ls_venv, masks, tmp_path)
    for k in masks:
        assert ours[k] == theirs[k], k
        assert np.array_equal(rle_to_mask(theirs[k], *masks[k].shape) == 255, masks[k])
    decoded = sdk_decode(
        ls_venv,
        [{"rle": ours[k], "height": m.shape[0], "width": m.shape[1]} for k, m in masks.items()],
        tmp_path,
    )
    for (k, m), d in zip(masks.items(), decoded, strict=True):
        assert np.array_equal(d, m.astype(np.uint8) * 255), k


# --- the full round trip ---------------------------------------------------------------------------


class _Backend:
    """This backend under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Backend:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "backend did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def _keypoint(x: float, y: float, w: int, h: int, positive: bool | None, label: str = "Foreground") -> dict:
    """As Label Studio's front end sends it; a manual (non-smart) keypoint has neither is_positive nor
    labels."""
    item = ls_keypoint(x, y, positive, w=w, h=h, label=label, id=f"kp{x:.0f}{y:.0f}", origin="manual")
    if positive is not None:
        item["value"]["labels"] = [label]
    return item


def _rectangle(x: float, y: float, bw: float, bh: float, w: int, h: int) -> dict:
    return ls_rectangle(x, y, bw, bh, w=w, h=h, id="rect1", origin="manual")


def _expected(predictor, emb, ctx: list[dict], w: int, h: int, previous: list[list[dict]] = ()) -> np.ndarray:
    """What the predictor returns directly for the same prompt in pixels (the documented rule:
    a single point → best stability of 3 masks; a box or several points → token 0). ``previous``:
    the contexts sent before on the same image, in order; when this one's keypoints are one of those
    plus one point (same box), the backend decodes with that answer's low-res logits as mask input."""
    return _answer(predictor, emb, ctx, w, h, list(previous))[0]


def _pixels(ctx: list[dict], w: int, h: int):
    kps = [c for c in ctx if c["type"] == "keypointlabels"]
    rects = [c for c in ctx if c["type"] == "rectanglelabels"]
    if rects:
        v = rects[-1]["value"]
        corners = coords.percent_to_pixels(
            [[v["x"], v["y"]], [v["x"] + v["width"], v["y"] + v["height"]]], w, h
        )
        return None, None, corners.reshape(-1)
    pts = coords.percent_to_pixels([[c["value"]["x"], c["value"]["y"]] for c in kps], w, h)
    return pts, [0 if c.get("is_positive") is False else 1 for c in kps], None


def _answer(predictor, emb, ctx: list[dict], w: int, h: int, previous: list[list[dict]]):
    """``(mask, low-res logits)`` of ``ctx`` after the ``previous`` contexts (see :func:`_expected`)."""
    pts, labels, box = _pixels(ctx, w, h)
    mask_input = None
    if pts is not None:
        key = {(round(float(x), 2), round(float(y), 2), lab) for (x, y), lab in zip(pts, labels, strict=True)}
        for i in range(len(previous) - 1, -1, -1):
            p_pts, p_labels, p_box = _pixels(previous[i], w, h)
            if p_pts is None or p_box is not None or len(p_pts) != len(pts) - 1:
                continue
            p_key = {
                (round(float(x), 2), round(float(y), 2), lab)
                for (x, y), lab in zip(p_pts, p_labels, strict=True)
            }
            if p_key < key:
                mask_input = _answer(predictor, emb, previous[i], w, h, previous[:i])[1][None]
                break
    if box is not None:
        pred = predictor.predict(box=box, num_multimask_outputs=1, embedding=emb)
        return pred.masks[0], pred.low_res_logits[0]
    k = 3 if len(pts) == 1 else 1
    pred = predictor.predict(pts, labels, mask_input=mask_input, num_multimask_outputs=k, embedding=emb)
    best = pred.best("stability") if k == 3 else 0
    return pred.masks[best], pred.low_res_logits[best]


def _poll_predictions(api, params: dict, n: int, timeout: float = 180.0) -> list[dict]:
    """``GET /api/predictions`` until it lists ``n`` (background results arrive through the API)."""
    deadline = time.monotonic() + timeout
    while True:
        preds = api.get("/api/predictions", params=params).json()
        if len(preds) >= n or time.monotonic() > deadline:
            return preds
        time.sleep(0.5)


def test_label_studio_round_trip(ls_venv: Path, onnx_predictor, tmp_path: Path) -> None:
    from edgesam_backend.labelstudio.app import create_app
    from edgesam_backend.labelstudio.settings import Settings
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator

    t_start = time.monotonic()
    # an EXIF-rotated photo: stored landscape, displayed portrait (orientation 6 = rotate 90° CW)
    rotated = tmp_path / "rotated.jpg"
    with Image.open(IMAGES / "2.jpeg") as im:
        exif = Image.Exif()
        exif[0x0112] = 6
        im.save(rotated, quality=92, exif=exif)

    with ls_server.label_studio(tmp_path) as ls, ls.client() as api:
        (ls.files_dir / "images").mkdir(exist_ok=True)
        (ls.files_dir / "images" / "rotated.jpg").write_bytes(rotated.read_bytes())
        settings = Settings.from_env(
            {},
            label_studio_url=ls.url,
            label_studio_api_key=ls.token,
            amg_strategy="grid",
            amg_points_per_side=AMG["points_per_side"],
            amg_stability_score_thresh=AMG["stability_score_thresh"],
            amg_pred_iou_thresh=AMG["pred_iou_thresh"],
            amg_box_nms_thresh=AMG["box_nms_thresh"],
        )
        app = create_app(settings, onnx_predictor, model_version="edgesam-e2e")
        with _Backend(app) as backend:
            # project + tasks: an upload (/data/upload/...) and local storage (/data/local-files/?d=...)
            pid = ls_create_project(api, "edgesam e2e", LS_CONFIG, upload=IMAGES / "1.jpeg")
            r = api.post(
                "/api/storages/localfiles",
                json={
                    "project": pid,
                    "path": str(ls.files_dir / "images"),
                    "use_blob_urls": True,
                    "regex_filter": r".*\.jpg",
                },
            )
            assert r.status_code == 201, r.text
            assert api.post(f"/api/storages/localfiles/{r.json()['id']}/sync").status_code == 200
            tasks = api.get("/api/tasks", params={"project": pid}).json()["tasks"]
            assert len(tasks) == 2, tasks
            by_kind = {"upload" if "/data/upload/" in t["data"]["image"] else "local": t for t in tasks}
            assert by_kind["local"]["data"]["image"] == "/data/local-files/?d=images/rotated.jpg"
            files = {"upload": IMAGES / "1.jpeg", "local": rotated}

            # register the backend (health + setup over HTTP); this project pre-annotates automatically
            mlid = ls_connect_backend(api, backend.url, pid, extra_params={"preannotate": "automatic"})["id"]
            assert api.get(f"/api/ml/{mlid}/versions").json()["versions"] == ["edgesam-e2e"]

            checked = 0
            sdk_items: list[dict] = []
            expected_masks: list[np.ndarray] = []
            for kind, task in by_kind.items():
                image = load_image(files[kind])  # EXIF applied, as the browser displays it
                h, w = image.shape[:2]
                if kind == "local":
                    assert (w, h) == (447, 640)  # displayed portrait
                emb = onnx_predictor.encode(image)
                prompts = {
                    "one point": [_keypoint(43.773, 45.807, w, h, True)],
                    "± points": [
                        _keypoint(43.773, 45.807, w, h, True),
                        _keypoint(15.659, 20.817, w, h, False),
                        _keypoint(60.25, 70.5, w, h, None),  # manual keypoint: positive
                    ],
                    "rectangle": [_rectangle(24.118, 30.439, 44.907, 39.099, w, h)],
                }
                for name, ctx in prompts.items():
                    r = api.post(
                        f"/api/ml/{mlid}/interactive-annotating",
                        json={"task": task["id"], "context": {"result": ctx}},
                    )
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert "errors" not in body, (kind, name, body)
                    data = body["data"]
                    assert data["model_version"] == "edgesam-e2e"
                    (region,) = data["result"]
                    assert region["type"] == "brushlabels" and region["from_name"] == "tag"
                    assert region["to_name"] == "image"
                    assert region["value"]["brushlabels"] == ["Foreground"]
                    assert (region["original_width"], region["original_height"]) == (w, h)
                    got = rle_to_mask(region["value"]["rle"], h, w)
                    want = _expected(onnx_predictor, emb, ctx, w, h)
                    assert want.any(), (kind, name)
                    assert np.array_equal(got == 255, want), (
                        f"{kind} / {name}: mask differs from the predictor's"
                    )
                    sdk_items.append({"rle": region["value"]["rle"], "height": h, "width": w})
                    expected_masks.append(want)
                    checked += 1
            assert checked == 6

            # a bad click through Label Studio: reported as an error, the backend keeps serving
            bad = [_keypoint(143.0, 45.0, 640, 428, True)]
            r = api.post(
                f"/api/ml/{mlid}/interactive-annotating",
                json={"task": by_kind["upload"]["id"], "context": {"result": bad}},
            )
            assert r.status_code == 200 and "422" in r.json()["errors"][0], r.text
            assert api.get(f"/api/ml/{mlid}").json()["state"] == "CO"

            # batch: Data Manager "Retrieve predictions" answers at once (nothing waits on automatic
            # masks); the masks are computed in the background and arrive through POST /api/predictions
            t0 = time.monotonic()
            r = api.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < 30, "Retrieve Predictions waited on the model"
            preds = _poll_predictions(api, {"project": pid}, 2)
            assert len(preds) == 2, preds
            amg = AutomaticMaskGenerator(onnx_predictor, **AMG)
            for pred in preds:
                assert pred["model_version"] == "edgesam-e2e"
                kind = next(k for k, t in by_kind.items() if t["id"] == pred["task"])
                image = load_image(files[kind])
                h, w = image.shape[:2]
                records = amg.generate(onnx_predictor.encode(image))
                assert len(records) >= 1
                assert len(pred["result"]) == len(records)
                for region, rec in zip(pred["result"], records, strict=True):
                    assert region["value"]["brushlabels"] == ["Foreground"]
                    assert (region["original_width"], region["original_height"]) == (w, h)
                    got = rle_to_mask(region["value"]["rle"], h, w)
                    assert np.array_equal(got == 255, rec["segmentation"]), f"batch mask differs ({kind})"
                    sdk_items.append({"rle": region["value"]["rle"], "height": h, "width": w})
                    expected_masks.append(rec["segmentation"])
            # a second "Retrieve predictions" stores nothing more
            api.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": pid},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            time.sleep(2)
            assert len(api.get("/api/predictions", params={"project": pid}).json()) == 2

            # detector boxes → masks: a project whose tasks carry a detector's predictions ("car",
            # "person"); the default mode turns each box into a mask with the mapped label
            upload_url = by_kind["upload"]["data"]["image"]
            image = load_image(IMAGES / "1.jpeg")
            h, w = image.shape[:2]
            emb = onnx_predictor.encode(image)
            pid2 = ls_create_project(api, "boxes", DETECTOR_CONFIG)
            ls_connect_backend(api, backend.url, pid2, extra_params={"label_map": {"person": "Human"}})
            boxes = {"car": (24.118, 30.439, 44.907, 39.099), "person": (5.0, 10.0, 20.0, 50.0)}
            det = [
                {
                    "from_name": "det",
                    "to_name": "image",
                    "type": "rectanglelabels",
                    "original_width": w,
                    "original_height": h,
                    "value": {
                        "x": x,
                        "y": y,
                        "width": bw,
                        "height": bh,
                        "rotation": 0,
                        "rectanglelabels": [lab],
                    },
                }
                for lab, (x, y, bw, bh) in boxes.items()
            ]
            r = api.post(
                f"/api/projects/{pid2}/import",
                json=[
                    {"data": {"image": upload_url}, "predictions": [{"model_version": "yolo", "result": det}]}
                ],
            )
            assert r.status_code == 201, r.text
            api.post(
                "/api/dm/actions",
                params={"id": "retrieve_tasks_predictions", "project": pid2},
                json={"selectedItems": {"all": True, "excluded": []}},
            )
            ours = [
                p for p in _poll_predictions(api, {"project": pid2}, 2) if p["model_version"] == "edgesam-e2e"
            ]
            assert len(ours) == 1, ours  # webhook + retrieve: one computation, one prediction
            brush = [g for g in ours[0]["result"] if g["type"] == "brushlabels"]
            rects = [g for g in ours[0]["result"] if g["type"] == "rectanglelabels"]
            assert [g["value"]["brushlabels"] for g in brush] == [["Vehicle"], ["Human"]]
            assert len(rects) == 2  # the tight box of each mask on the detector's (non-smart) control
            for g, (x, y, bw, bh) in zip(brush, boxes.values(), strict=True):
                corners = coords.percent_to_pixels([[x, y], [x + bw, y + bh]], w, h)
                want = onnx_predictor.predict(box=corners.reshape(-1), num_multimask_outputs=1, embedding=emb)
                assert np.array_equal(rle_to_mask(g["value"]["rle"], h, w) == 255, want.masks[0])
                sdk_items.append({"rle": g["value"]["rle"], "height": h, "width": w})
                expected_masks.append(want.masks[0])

        # Label Studio's own decoder agrees on every mask we sent
        for d, want in zip(sdk_decode(ls_venv, sdk_items, tmp_path), expected_masks, strict=True):
            assert np.array_equal(d == 255, want)
    print(f"label studio e2e: {time.monotonic() - t_start:.1f} s")


# --- learning from the project ---------------------------------------------------------------------

TRAIN_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Shape"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Shape" smart="true"/></KeyPointLabels>
</View>"""


def test_label_studio_start_training_serves_a_new_version(
    ls_venv: Path, small_edgesam, tmp_path: Path
) -> None:
    """Annotations made through Label Studio's API → "Start Training" (``POST /api/ml/{id}/train``,
    which Label Studio turns into START_TRAINING on /webhook) → a fit in the background → a new version
    in ``/versions`` (as Label Studio lists it) that answers the next click."""
    from edgesam_backend.formats.labelstudio.rle import mask_to_rle
    from edgesam_backend.labelstudio.app import create_app
    from edgesam_backend.labelstudio.settings import Settings

    ckpt, onnx = small_edgesam
    rng = np.random.default_rng(3)
    with ls_server.label_studio(tmp_path) as ls, ls.client() as api:
        settings = Settings.from_env(
            {},
            label_studio_url=ls.url,
            label_studio_api_key=ls.token,
            onnx_dir=onnx,
            train_init=str(ckpt),
            train_dir=tmp_path / "fits",
            train_steps=4,
            train_threads=1,
            train_max_drop=100.0,
            preannotate="none",
        )
        app = create_app(settings)
        with _Backend(app) as backend:
            pid = api.post("/api/projects", json={"title": "fit", "label_config": TRAIN_CONFIG}).json()["id"]
            for i in range(3):
                img = rng.integers(0, 60, (80, 96, 3), dtype=np.uint8)
                img[20:50, 30:70] = (230, 200, 40)
                path = tmp_path / f"shape{i}.png"
                Image.fromarray(img).save(path)
                with open(path, "rb") as f:
                    r = api.post(f"/api/projects/{pid}/import", files={"file": (path.name, f, "image/png")})
                assert r.status_code == 201, r.text
            mask = np.zeros((80, 96), bool)
            mask[20:50, 30:70] = True
            brush = {
                "from_name": "tag",
                "to_name": "image",
                "type": "brushlabels",
                "original_width": 96,
                "original_height": 80,
                "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": ["Shape"]},
            }
            tasks = api.get("/api/tasks", params={"project": pid}).json()["tasks"]
            for t in tasks:
                r = api.post(f"/api/tasks/{t['id']}/annotations", json={"result": [brush]})
                assert r.status_code == 201, r.text
            r = api.post(
                "/api/ml",
                json={"url": backend.url, "project": pid, "title": "edgesam", "is_interactive": True},
            )
            assert r.status_code == 201 and r.json()["state"] == "CO", r.text
            mlid = r.json()["id"]
            base = api.get(f"/api/ml/{mlid}/versions").json()["versions"]
            assert len(base) == 1, base

            r = api.post(f"/api/ml/{mlid}/train", json={})
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                versions = api.get(f"/api/ml/{mlid}/versions").json()["versions"]
                if len(versions) == 2:
                    break
                time.sleep(2)
            fits = app.state.backend.fits
            while fits.running is not None and time.monotonic() < deadline:  # the swap, then the job ends
                time.sleep(0.2)
            jobs = fits.status()
            assert len(versions) == 2, jobs
            assert jobs["finished"][-1]["state"] == "done" and jobs["finished"][-1]["tasks"] == 3, jobs
            new = versions[1]
            kp = {
                "from_name": "kp",
                "to_name": "image",
                "type": "keypointlabels",
                "original_width": 96,
                "original_height": 80,
                "value": {"x": 50.0, "y": 43.75, "width": 1, "keypointlabels": ["Shape"]},
                "is_positive": True,
            }
            r = api.post(
                f"/api/ml/{mlid}/interactive-annotating",
                json={"task": tasks[0]["id"], "context": {"result": [kp]}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["data"]["model_version"] == new, r.json()
            metrics = httpx.get(f"{backend.url}/metrics").text
            assert 'edgesam_training_total{outcome="swapped"} 1' in metrics
