"""The Label Studio backend over HTTP (FastAPI TestClient) with the reference ONNX predictor: protocol
routes, interactive masks identical to direct predictor calls, batch mode, webhooks, auth, metrics,
bad input (4xx with a message, server keeps serving), no torch on the serving path, ``edgesam serve``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
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
from edgesam_backend.labelstudio import interactive
from edgesam_backend.labelstudio.app import create_app
from edgesam_backend.labelstudio.images import ImageFetcher
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.runtime.image import load_image

from .conftest import IMAGES
from .helpers import LS_CONFIG, CountingPredictor, free_port, ls_keypoint, ls_rectangle

POLY_CONFIG = LS_CONFIG.replace(
    "</View>", '<PolygonLabels name="poly" toName="image"><Label value="Foreground"/></PolygonLabels></View>'
)
AMG = {
    "amg_strategy": "grid",
    "amg_points_per_side": 4,
    "amg_stability_score_thresh": 0.0,
    "amg_pred_iou_thresh": 0.0,
}


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ls-files")
    (root / "images").mkdir()
    (root / "images" / "1.jpeg").write_bytes((IMAGES / "1.jpeg").read_bytes())
    (root / "images" / "2.jpeg").write_bytes((IMAGES / "2.jpeg").read_bytes())
    with Image.open(IMAGES / "3.jpeg") as im:  # EXIF orientation 8: displayed rotated 90° CCW
        exif = Image.Exif()
        exif[0x0112] = 8
        im.save(root / "images" / "exif8.jpg", exif=exif)
    (root / "images" / "notimage.jpg").write_bytes(b"<html>not an image</html>")
    (root / "images" / "huge.png").write_bytes(_png_bytes(3000, 2000))
    return root


def _fake_ls(request: httpx.Request) -> httpx.Response:
    if request.url.host != "ls.test":
        raise httpx.ConnectError("connection refused", request=request)
    if request.headers.get("authorization") != "Token tok":
        return httpx.Response(401)
    if request.url.path == "/data/upload/1/truck.jpg":
        return httpx.Response(200, content=(IMAGES / "truck.jpg").read_bytes())
    if request.url.path == "/data/upload/1/big.jpg":
        return httpx.Response(200, content=b"x" * 100, headers={"content-length": str(10**9)})
    return httpx.Response(404)


def _settings(files: Path, **kw) -> Settings:
    base = dict(
        label_studio_url="http://ls.test",
        label_studio_api_key="tok",
        local_files_document_root=files,
        max_image_pixels=5_000_000,
        allowed_hosts=["down.test"],  # resolves nowhere: "unreachable"
        preannotate="automatic",  # batch requests wait for the background result (scripts' mode)
        preannotate_wait=120.0,
        **AMG,
    )
    base.update(kw)
    return Settings.from_env({}, **base)


def _app(files: Path, predictor, **kw):
    s = _settings(files, **kw)
    fetcher = ImageFetcher(s, transport=httpx.MockTransport(_fake_ls))
    return create_app(s, predictor, model_version="edgesam-test", fetcher=fetcher)


@pytest.fixture(scope="module")
def client(files: Path, onnx_predictor):
    with TestClient(_app(files, onnx_predictor)) as c:
        yield c


def _kp(x, y, positive=True, w=640, h=428, rot=0):
    """A labelled keypoint (``positive=None``: without ``is_positive``) on the 640 x 428 test image."""
    return ls_keypoint(x, y, positive, w=w, h=h, rot=rot, labelled=True)


def _rect(x, y, bw, bh, w=640, h=428):
    return ls_rectangle(x, y, bw, bh, w=w, h=h, label="Background")


def _predict(
    client, ctx, image="/data/local-files/?d=images/1.jpeg", config=LS_CONFIG, project="1.1", task_id=1
):
    body = {
        "tasks": [{"id": task_id, "data": {"image": image}}],
        "project": project,
        "label_config": config,
        "params": {"login": None, "password": None, "context": {"result": ctx} if ctx is not None else None},
    }
    return client.post("/predict", json=body)


@pytest.fixture(scope="module")
def emb1(onnx_predictor):
    img = load_image(IMAGES / "1.jpeg")
    return img, onnx_predictor.encode(img)


# --- protocol routes --------------------------------------------------------------------------------


def test_health_setup_versions(client) -> None:
    assert client.get("/health").json() == {
        "status": "UP",
        "model_class": "EdgeSAM",
        "model_version": "edgesam-test",
        "providers": ["CPUExecutionProvider"],
        "precision": "fp32",
    }
    r = client.post(
        "/setup",
        json={
            "project": "1.1795554085",
            "schema": LS_CONFIG,
            "hostname": "http://x",
            "access_token": "t",
            "extra_params": None,
        },
    )
    assert r.status_code == 200 and r.json() == {"model_version": "edgesam-test"}
    assert client.get("/versions").json() == {"versions": ["edgesam-test"]}


def test_setup_rejects_what_it_cannot_serve(client) -> None:
    r = client.post(
        "/setup", json={"project": "2.1", "schema": '<View><Image name="i" value="$image"/></View>'}
    )
    assert r.status_code == 400
    assert "no <BrushLabels>, <BitmaskLabels>, <PolygonLabels>" in r.json()["detail"]
    r = client.post(
        "/setup", json={"project": "2.1", "schema": LS_CONFIG, "extra_params": {"mask_choice": "best"}}
    )
    assert r.status_code == 400 and "extra_params.mask_choice = 'best'" in r.json()["detail"]
    r = client.post(
        "/setup", json={"project": "2.1", "schema": LS_CONFIG, "extra_params": {"default_label": "Cat"}}
    )
    assert r.status_code == 422 and "default label 'Cat'" in r.json()["detail"]


# --- interactive: identical to the predictor --------------------------------------------------------


def _mask(region) -> np.ndarray:
    return rle_to_mask(region["value"]["rle"], region["original_height"], region["original_width"]) == 255


def test_interactive_single_point(client, onnx_predictor, emb1) -> None:
    _, emb = emb1
    r = _predict(client, [_kp(43.773, 45.807)])
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    (region,) = res["result"]
    assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
    assert region["value"]["brushlabels"] == ["Foreground"] and region["value"]["format"] == "rle"
    assert (region["original_width"], region["original_height"]) == (640, 428)
    assert res["model_version"] == "edgesam-test"
    pts = coords.percent_to_pixels([[43.773, 45.807]], 640, 428)
    pred = onnx_predictor.predict(pts, [1], num_multimask_outputs=3, embedding=emb)
    best = pred.best("stability")
    assert np.array_equal(_mask(region), pred.masks[best])
    assert region["score"] == pytest.approx(float(pred.stability_scores[best]), abs=1e-6)


def test_interactive_points_and_box(client, onnx_predictor, emb1) -> None:
    _, emb = emb1
    ctx = [_kp(43.773, 45.807), _kp(15.659, 20.817, False), _kp(70.1, 60.2, None)]
    (region,) = _predict(client, ctx).json()["results"][0]["result"]
    pts = coords.percent_to_pixels([[43.773, 45.807], [15.659, 20.817], [70.1, 60.2]], 640, 428)
    want = onnx_predictor.predict(pts, [1, 0, 1], num_multimask_outputs=1, embedding=emb).masks[0]
    assert np.array_equal(_mask(region), want)

    (region,) = _predict(client, [_rect(24.1, 30.4, 44.9, 39.1)]).json()["results"][0]["result"]
    assert region["value"]["brushlabels"] == ["Background"]  # the prompt's label
    box = coords.percent_to_pixels([[24.1, 30.4], [24.1 + 44.9, 30.4 + 39.1]], 640, 428).reshape(-1)
    want = onnx_predictor.predict(box=box, num_multimask_outputs=1, embedding=emb).masks[0]
    assert np.array_equal(_mask(region), want)


def test_interactive_mask_choice_per_project(client, onnx_predictor, emb1) -> None:
    _, emb = emb1
    r = client.post(
        "/setup", json={"project": "5.1", "schema": LS_CONFIG, "extra_params": {"mask_choice": "single"}}
    )
    assert r.status_code == 200
    (region,) = _predict(client, [_kp(43.773, 45.807)], project="5.1").json()["results"][0]["result"]
    pts = coords.percent_to_pixels([[43.773, 45.807]], 640, 428)
    want = onnx_predictor.predict(pts, [1], num_multimask_outputs=1, embedding=emb).masks[0]
    assert np.array_equal(_mask(region), want)


def test_interactive_exif_orientation(client, onnx_predictor) -> None:
    img = load_image(IMAGES.parent / "images" / "3.jpeg")
    h0, w0 = img.shape[:2]
    shown = load_image(client.app.state.settings.local_files_document_root / "images" / "exif8.jpg")
    h, w = shown.shape[:2]
    assert (w, h) == (h0, w0)  # displayed sideways
    (region,) = _predict(
        client, [_kp(30.5, 62.25, w=w, h=h)], image="/data/local-files/?d=images/exif8.jpg"
    ).json()["results"][0]["result"]
    assert (region["original_width"], region["original_height"]) == (w, h)
    pts = coords.percent_to_pixels([[30.5, 62.25]], w, h)
    pred = onnx_predictor.predict(pts, [1], num_multimask_outputs=3, embedding=onnx_predictor.encode(shown))
    assert np.array_equal(_mask(region), pred.masks[pred.best("stability")])


def test_interactive_rotated_view_coordinates(client, onnx_predictor, emb1) -> None:
    """image_rotation 90 with sizes of the rotated view: the prompt is rotated back, the mask rotated
    into the view (and reported with the view's size)."""
    _, emb = emb1
    (region,) = _predict(client, [_kp(35.0, 55.0, w=428, h=640, rot=90)]).json()["results"][0]["result"]
    assert (region["original_width"], region["original_height"], region["image_rotation"]) == (428, 640, 90)
    view_px = coords.percent_to_pixels([[35.0, 55.0]], 428, 640)
    pts = coords.unrotate_points(view_px, 640, 428, 90)
    pred = onnx_predictor.predict(pts, [1], num_multimask_outputs=3, embedding=emb)
    want = coords.rotate_mask(pred.masks[pred.best("stability")], 90)
    assert np.array_equal(_mask(region), want)


def test_interactive_polygons(client) -> None:
    r = _predict(client, [_kp(43.773, 45.807)], config=POLY_CONFIG)
    regions = r.json()["results"][0]["result"]
    brush = [g for g in regions if g["type"] == "brushlabels"]
    polys = [g for g in regions if g["type"] == "polygonlabels"]
    assert len(brush) == 1 and len(polys) >= 1
    for p in polys:
        assert (
            p["from_name"] == "poly"
            and p["value"]["polygonlabels"] == ["Foreground"]
            and p["value"]["closed"]
        )
        pts = np.array(p["value"]["points"])
        assert pts.shape[1] == 2 and len(pts) >= 3 and pts.min() >= 0 and pts.max() <= 100


# --- batch --------------------------------------------------------------------------------------------


def test_batch_one_result_per_task_in_order(client, onnx_predictor, emb1) -> None:
    from edgesam_backend.runtime.amg import AutomaticMaskGenerator

    body = {
        "tasks": [
            {"id": 1, "data": {"image": "/data/local-files/?d=images/1.jpeg"}},
            {"id": 2, "data": {"image": "/data/local-files/?d=images/notimage.jpg"}},
            {"id": 3, "data": {"image": "/data/local-files/?d=images/2.jpeg"}},
        ],
        "project": "1.1",
        "label_config": LS_CONFIG,
        "params": {"context": None},
    }
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 3 and results[1] == []  # a failing task gets no prediction
    amg = AutomaticMaskGenerator(
        onnx_predictor, points_per_side=4, stability_score_thresh=0.0, pred_iou_thresh=0.0
    )
    records = amg.generate(emb1[1])
    regions = results[0]["result"]
    assert len(regions) == len(records) >= 1 and results[0]["model_version"] == "edgesam-test"
    for region, rec in zip(regions, records, strict=True):
        assert region["value"]["brushlabels"] == ["Foreground"]  # the default label: the first one
        assert np.array_equal(_mask(region), rec["segmentation"])
    assert results[2]["result"] and results[2]["result"][0]["original_width"] == 640


def test_batch_default_label_setting(files, onnx_predictor) -> None:
    with TestClient(_app(files, onnx_predictor, default_label="Background", batch_max_regions=2)) as c:
        r = _predict(c, None)
        regions = r.json()["results"][0]["result"]
        assert 1 <= len(regions) <= 2 and all(g["value"]["brushlabels"] == ["Background"] for g in regions)


# --- webhook, cache, single flight ---------------------------------------------------------------------


def test_webhook_precomputes_embeddings(client) -> None:
    backend = client.app.state.backend
    before = backend.metrics.cache_misses.value()
    stored = backend.is_cached("/data/local-files/?d=images/2.jpeg", 11)  # skipped when already stored
    t0 = time.perf_counter()
    r = client.post(
        "/webhook",
        json={
            "action": "TASKS_CREATED",
            "project": {"id": 9, "label_config": LS_CONFIG},
            "tasks": [
                {"id": 11, "data": {"image": "/data/local-files/?d=images/2.jpeg"}},
                {"id": 12, "data": {"image": "/data/upload/1/truck.jpg"}},
            ],
        },
    )
    assert r.status_code == 200 and r.json()["precompute_queued"] == 2 - stored
    assert time.perf_counter() - t0 < 1.0  # Label Studio waits 1 s
    deadline = time.monotonic() + 60
    while backend._pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend._pending == 0
    hits, misses = backend.metrics.cache_hits.value(), backend.metrics.cache_misses.value()
    r = _predict(client, [_kp(50, 50, w=1800, h=1200)], image="/data/upload/1/truck.jpg", task_id=12)
    assert r.status_code == 200
    # the click found the precomputed embedding (no encoder run); the webhook's background
    # pre-annotation of the same tasks may count hits of its own meanwhile
    assert backend.metrics.cache_misses.value() == misses
    assert backend.metrics.cache_hits.value() >= hits + 1
    assert backend.metrics.cache_misses.value() >= before + 1
    r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "annotation": {}})
    assert r.status_code == 200 and r.json()["status"] == "Unknown event"


def test_concurrent_requests_encode_once(files, onnx_predictor) -> None:
    counting = CountingPredictor(onnx_predictor, delay=0.3)
    app = _app(files, counting)
    backend = app.state.backend
    out: list = []
    threads = [
        threading.Thread(
            target=lambda: out.append(backend.embedding("/data/local-files/?d=images/2.jpeg", 3))
        )
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert counting.calls == 1 and len(out) == 6
    assert len({id(e) for e, _ in out}) == 1
    # same bytes under another URL: content-keyed, no second encode
    (files / "images" / "copy.jpeg").write_bytes((files / "images" / "2.jpeg").read_bytes())
    backend.embedding("/data/local-files/?d=images/copy.jpeg", 4)
    assert counting.calls == 1 and len(backend.cache) == 1


def test_metrics_route(client) -> None:
    _predict(client, [_kp(43.773, 45.807)])
    text = client.get("/metrics").text
    assert 'edgesam_http_requests_total{route="/predict",method="POST",status="200"}' in text
    assert "edgesam_http_request_duration_seconds_bucket" in text
    assert "edgesam_embedding_cache_hits_total" in text and "edgesam_embedding_cache_bytes" in text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# --- bad input: 4xx with a message, and the server keeps serving ----------------------------------------

BAD = [
    ("malformed json", b'{"tasks": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "must be a JSON object"),
    ("no tasks", {"tasks": [], "label_config": LS_CONFIG}, 400, "'tasks' must be a non-empty list"),
    (
        "missing original size",
        {"ctx": [{**_kp(10, 10), "original_width": None}]},
        422,
        "original_width and original_height are required",
    ),
    ("missing value", {"ctx": [{**_kp(10, 10), "value": None}]}, 422, "value must be an object"),
    ("x over 100", {"ctx": [_kp(100.5, 10)]}, 422, "value.x = 100.5 is outside 0-100"),
    ("negative y", {"ctx": [_kp(10, -1)]}, 422, "value.y = -1 is outside 0-100"),
    (
        "rectangle past the edge",
        {"ctx": [_rect(80, 10, 30, 10)]},
        422,
        "value.x + width = 110 is outside 0-100",
    ),
    (
        "unknown label",
        {"ctx": [{**_kp(10, 10), "value": {"x": 10, "y": 10, "keypointlabels": ["Cat"]}}]},
        422,
        "label 'Cat' is not defined",
    ),
    (
        "no prompt regions",
        {"ctx": [{"type": "choices", "value": {}}]},
        422,
        "no keypointlabels or rectanglelabels",
    ),
    ("unreachable host", {"ctx": [_kp(10, 10)], "image": "http://down.test/x.png"}, 424, "cannot reach"),
    (
        "host not allowed",
        {"ctx": [_kp(10, 10)], "image": "http://169.254.169.254/latest"},
        403,
        "is not allowed",
    ),
    (
        "not an image",
        {"ctx": [_kp(10, 10)], "image": "/data/local-files/?d=images/notimage.jpg"},
        422,
        "not a decodable image",
    ),
    (
        "too many pixels",
        {"ctx": [_kp(10, 10)], "image": "/data/local-files/?d=images/huge.png"},
        413,
        "6000000 pixels, over the limit of 5000000",
    ),
    ("too many bytes", {"ctx": [_kp(10, 10)], "image": "/data/upload/1/big.jpg"}, 413, "over the limit"),
    ("missing image", {"ctx": [_kp(10, 10)], "image": "/data/upload/1/missing.jpg"}, 404, "not found"),
    (
        "local-files traversal",
        {"ctx": [_kp(10, 10)], "image": "/data/local-files/?d=../../../etc/passwd"},
        400,
        "path traversal",
    ),
    (
        "absolute local path",
        {"ctx": [_kp(10, 10)], "image": "/data/local-files/?d=/etc/passwd"},
        400,
        "path traversal",
    ),
    ("no image url", {"ctx": [_kp(10, 10)], "image": ""}, 422, "has no image URL under 'image'"),
    (
        "bad label config",
        {"ctx": [_kp(10, 10)], "config": "<View>"},
        400,
        "label config: label config is not valid",
    ),
]


@pytest.mark.parametrize(("name", "body", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(client, name, body, status, message) -> None:
    if isinstance(body, bytes):
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
    elif "ctx" in body:
        r = _predict(
            client,
            body["ctx"],
            image=body.get("image", "/data/local-files/?d=images/1.jpeg"),
            config=body.get("config", LS_CONFIG),
            task_id=100 + BAD.index(next(b for b in BAD if b[0] == name)),
        )
    else:
        r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert client.get("/health").status_code == 200
    assert _predict(client, [_kp(43.773, 45.807)]).status_code == 200


def test_oversized_request_body(files, onnx_predictor) -> None:
    with TestClient(_app(files, onnx_predictor, max_body_bytes=1000)) as c:
        r = c.post(
            "/predict", content=b"{" + b" " * 2000 + b"}", headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and "over the limit of 1000" in r.json()["detail"]
        assert c.get("/health").status_code == 200


# --- basic auth -----------------------------------------------------------------------------------------


def test_basic_auth(files, onnx_predictor) -> None:
    with TestClient(_app(files, onnx_predictor, basic_auth_user="u1", basic_auth_pass="p1")) as c:
        assert c.get("/health").status_code == 200  # docker healthchecks; LS sends auth anyway
        r = c.post("/setup", json={"project": "1.1", "schema": LS_CONFIG})
        assert r.status_code == 401 and "authentication required" in r.json()["detail"]
        assert (
            c.post("/setup", json={"project": "1.1", "schema": LS_CONFIG}, auth=("u1", "wrong")).status_code
            == 401
        )
        assert (
            c.post("/setup", json={"project": "1.1", "schema": LS_CONFIG}, auth=("u1", "p1")).status_code
            == 200
        )
        assert c.get("/metrics").status_code == 401
        # /webhook too (give Label Studio's webhook an Authorization header; EDGESAM_WEBHOOK_AUTH=false
        # restores unauthenticated webhooks)
        assert c.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 401
        assert c.post("/webhook", json={"action": "PROJECT_UPDATED"}, auth=("u1", "p1")).status_code == 200


# --- deployment ------------------------------------------------------------------------------------------


def test_edgesam_serve_command(onnx_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("LABEL_STUDIO_URL", "BASIC_AUTH_USER")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgesam_backend.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--onnx-dir",
            str(onnx_dir),
            "--threads",
            "2",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "edgesam serve did not answer /health"
                time.sleep(0.25)
        assert r.status_code == 200 and r.json()["status"] == "UP"
        assert r.json()["model_version"].startswith("edgesam-")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    r = subprocess.run(
        [sys.executable, "-m", "edgesam_backend.cli", "serve", "--onnx-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "lacks" in r.stderr


# --- internals that must equal the engine's own results ---------------------------------------------------


def test_predict_mask_equals_predictor_predict(client, onnx_predictor, emb1) -> None:
    """The backend upscales only the chosen mask; it must equal ``predict(...).masks[best]``."""
    _, emb = emb1
    backend = client.app.state.backend
    rng = np.random.default_rng(1)
    for i in range(8):
        pts = rng.uniform([0, 0], [640, 428], size=(1 + i % 3, 2))
        labels = rng.integers(0, 2, size=len(pts))
        labels[0] = 1
        box = np.array([50.5, 40.25, 400.75, 300.0]) if i % 4 == 3 else None
        for k, kind in ((1, None), (3, "stability"), (3, "iou"), (4, "stability")):
            mask, score, _ = interactive.predict_mask(backend.predictor, emb, pts, labels, box, k, kind)
            pred = onnx_predictor.predict(pts, labels, box, num_multimask_outputs=k, embedding=emb)
            idx = 0 if kind is None else pred.best(kind)
            assert np.array_equal(mask, pred.masks[idx]), (i, k, kind)
            assert score == pytest.approx(float(pred.scores(kind or "stability")[idx]))


def test_batch_uses_region_proposals_when_the_encoder_has_them(client, onnx_predictor, emb1) -> None:
    import dataclasses

    from edgesam_backend.runtime.amg import AutomaticMaskGenerator
    from edgesam_backend.runtime.proposals import Proposals

    _, emb = emb1
    boxes = np.array([[10, 10, 300, 200], [200, 100, 600, 400], [0, 0, 640, 428]], np.float32)
    with_props = dataclasses.replace(emb, proposals=Proposals(boxes, np.array([0.9, 0.8, 0.7], np.float32)))
    records = client.app.state.backend.automatic_masks(with_props)
    assert records and all(r["point_coords"] == [] and "box_prompt" in r for r in records)
    amg = AutomaticMaskGenerator(
        onnx_predictor, points_per_side=4, stability_score_thresh=0.0, pred_iou_thresh=0.0
    )
    want = amg.generate_from_boxes(emb, boxes, [0.9, 0.8, 0.7], filter=True)  # the batch mode filters
    assert len(records) == len(want)
    for a, b in zip(records, want, strict=True):
        assert np.array_equal(a["segmentation"], b["segmentation"])


def test_batch_time_budget_and_switch(files, onnx_predictor) -> None:
    tasks = [
        {"id": i, "data": {"image": f"/data/local-files/?d=images/{n}"}}
        for i, n in enumerate(["1.jpeg", "2.jpeg"])
    ]
    body = {"tasks": tasks, "project": "1.1", "label_config": LS_CONFIG, "params": {"context": None}}
    # a tiny budget: enforced between decoder batches, also inside the first task; every task is left
    # for the next request
    with TestClient(_app(files, onnx_predictor, batch_time_budget=0.001)) as c:
        results = c.post("/predict", json=body).json()["results"]
        assert results == [[], []]
        assert "edgesam_batch_deferred_tasks_total 2" in c.get("/metrics").text
    with TestClient(_app(files, onnx_predictor, batch=False)) as c:
        assert c.post("/predict", json=body).json() == {"results": [[], []]}
        # interactive still works
        assert _predict(c, [_kp(43.773, 45.807)]).status_code == 200


def test_health_and_setup_stay_fast_during_a_batch(files, onnx_predictor) -> None:
    """Label Studio's timeouts: /health 1 s, /setup 3 s — also while a long batch job runs."""
    with TestClient(_app(files, onnx_predictor, amg_points_per_side=6)) as c:
        body = {
            "tasks": [{"id": 1, "data": {"image": "/data/upload/1/truck.jpg"}}],
            "project": "1.1",
            "label_config": LS_CONFIG,
            "params": {"context": None},
        }
        job = threading.Thread(target=lambda: c.post("/predict", json=body))
        job.start()
        time.sleep(0.5)
        worst = 0.0
        while job.is_alive():
            t = time.perf_counter()
            assert c.get("/health").status_code == 200
            assert c.post("/setup", json={"project": "1.1", "schema": LS_CONFIG}).status_code == 200
            worst = max(worst, time.perf_counter() - t)
            time.sleep(0.2)
        job.join()
        assert worst < 1.0, worst
