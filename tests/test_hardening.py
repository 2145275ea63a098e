"""Issue 14 (hardening) on the Label Studio backend: bounded prompts and extra_params, no credential sent
to a host that /setup named, JSON-only bodies, streamed body limits, webhook auth and precompute
priority, deep JSON, decompression bombs, URL parsing, Basic scheme case, memory trimming.

Fast: the synthetic :class:`~tests.helpers.DiscPredictor` (no ONNX model) and in-memory transports."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from edgesam_backend.labelstudio.app import create_app
from edgesam_backend.labelstudio.errors import BackendError
from edgesam_backend.labelstudio.images import ImageFetcher, decode_image
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.runtime.amg import AutomaticMaskGenerator, GenerationStopped
from edgesam_backend.runtime.prompts import MAX_PROMPT_POINTS, PromptError, pack_prompt

from .conftest import IMAGES
from .helpers import LS_CONFIG, DiscPredictor, free_port, ls_keypoint

JPEG = (IMAGES / "1.jpeg").read_bytes()


class SlowDisc(DiscPredictor):
    """A :class:`DiscPredictor` whose decoder and encoder calls take ``delay`` seconds each."""

    def __init__(self, delay: float = 0.05, encode_delay: float = 0.0) -> None:
        super().__init__()
        self.delay, self.encode_delay = delay, encode_delay

    def _decode(self, embeddings, coords, labels, mask_input):
        time.sleep(self.delay)
        return super()._decode(embeddings, coords, labels, mask_input)

    def _encode_tensor(self, x):
        time.sleep(self.encode_delay)
        return super()._encode_tensor(x)


class Recorder:
    """An httpx transport: Label Studio at ``ls.test`` serving ``/data/upload/*`` (any auth) and a
    foreign ``evil.test`` doing the same; every request's (host, Authorization) is recorded."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.host, request.headers.get("authorization")))
        if request.url.path.startswith("/data/upload/"):
            return httpx.Response(200, content=JPEG)
        return httpx.Response(404)


def make_client(tmp_path: Path, predictor=None, transport=None, **kw) -> TestClient:
    base = {
        "local_files_document_root": tmp_path,
        "amg_points_per_side": 4,
        "amg_stability_score_thresh": 0.0,
        "amg_pred_iou_thresh": 0.0,
        "amg_use_proposals": False,
    }
    base.update(kw)
    s = Settings.from_env({}, **base)
    fetcher = ImageFetcher(s, transport=httpx.MockTransport(transport or Recorder()))
    app = create_app(s, predictor or DiscPredictor(), model_version="t", fetcher=fetcher)
    return TestClient(app)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.jpeg").write_bytes(JPEG)
    return tmp_path


def predict_body(ctx, image="/data/local-files/?d=images/1.jpeg", task_id=1) -> dict:
    return {
        "tasks": [{"id": task_id, "data": {"image": image}}],
        "project": "1.1",
        "label_config": LS_CONFIG,
        "params": {"context": {"result": ctx} if ctx is not None else None},
    }


# --- 1: prompt size ------------------------------------------------------------------------------------


def test_points_per_prompt_and_regions_per_context_are_bounded(files) -> None:
    with make_client(files, max_prompt_points=8, max_context_regions=12) as c:
        ok = c.post("/predict", json=predict_body([ls_keypoint(10 + i, 10) for i in range(8)]))
        assert ok.status_code == 200, ok.text
        r = c.post("/predict", json=predict_body([ls_keypoint(10 + i, 10) for i in range(9)]))
        assert r.status_code == 422 and "at most 8 points" in r.json()["detail"]
        assert "EDGESAM_MAX_PROMPT_POINTS" in r.json()["detail"]
        brush = {"type": "brushlabels", "value": {}}
        r = c.post("/predict", json=predict_body([ls_keypoint(10, 10)] + [brush] * 12))
        assert r.status_code == 413 and "at most 12 regions" in r.json()["detail"]


def test_pack_prompt_refuses_more_points_than_the_hard_limit() -> None:
    n = MAX_PROMPT_POINTS + 1
    with pytest.raises(PromptError, match=f"at most {MAX_PROMPT_POINTS} points"):
        pack_prompt(np.ones((n, 2)), np.ones(n), None, (100, 100))
    c, _ = pack_prompt(np.ones((MAX_PROMPT_POINTS, 2)), np.ones(MAX_PROMPT_POINTS), None, (100, 100))
    assert c.shape == (1, MAX_PROMPT_POINTS + 1, 2)


# --- 2: /setup must not redirect the configured credential ---------------------------------------------


def test_setup_hostname_never_receives_the_configured_api_key(files) -> None:
    rec = Recorder()
    with make_client(files, transport=rec, label_studio_api_key="SECRET") as c:
        assert c.post(
            "/setup", json={"project": "1.1", "schema": LS_CONFIG, "hostname": "http://evil.test"}
        ).is_success
        c.post("/predict", json=predict_body([ls_keypoint(40, 40)], image="/data/upload/1/a.jpg"))
        assert rec.seen and all(auth is None or "SECRET" not in auth for _, auth in rec.seen), rec.seen
        # a token that came with the same /setup is used for that host
        body = {"project": "1.1", "schema": LS_CONFIG, "hostname": "http://evil.test", "access_token": "own"}
        assert c.post("/setup", json=body).is_success
        r = c.post(
            "/predict", json=predict_body([ls_keypoint(40, 40)], image="/data/upload/1/b.jpg", task_id=2)
        )
        assert r.status_code == 200, r.text
        assert rec.seen[-1] == ("evil.test", "Token own")


def test_configured_label_studio_gets_the_configured_key(files) -> None:
    rec = Recorder()
    with make_client(
        files, transport=rec, label_studio_url="http://ls.test", label_studio_api_key="SECRET"
    ) as c:
        body = {"project": "1.1", "schema": LS_CONFIG, "hostname": "http://evil.test", "access_token": "x"}
        assert c.post("/setup", json=body).is_success
        r = c.post("/predict", json=predict_body([ls_keypoint(40, 40)], image="/data/upload/1/a.jpg"))
        assert r.status_code == 200, r.text
        assert rec.seen == [("ls.test", "Token SECRET")]


@pytest.mark.parametrize("route", ["/predict", "/setup", "/webhook"])
def test_json_content_type_is_required(files, route) -> None:
    with make_client(files) as c:
        text = '{"project": "1.1", "schema": "x", "action": "X"}'
        r = c.post(route, content=text, headers={"content-type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["detail"]
        r = c.post(route, content=text)
        assert r.status_code == 415
        r = c.post(route, content=text, headers={"content-type": "application/json; charset=utf-8"})
        assert r.status_code != 415


# --- 3: extra_params limits, time budget inside a task, abandoned requests ------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("points_per_side", 0),
        ("points_per_side", 100000),
        ("points_per_side", 256),
        ("box_nms_thresh", 0),
        ("max_regions", 0),
        ("min_mask_region_area", -1),
        ("pred_iou_thresh", 2),
    ],
)
def test_extra_params_have_the_env_limits(files, key, value) -> None:
    with make_client(files) as c:
        r = c.post("/setup", json={"project": "1.1", "schema": LS_CONFIG, "extra_params": {key: value}})
        assert r.status_code == 400 and f"extra_params.{key}" in r.json()["detail"], r.text
        ok = c.post(
            "/setup", json={"project": "1.1", "schema": LS_CONFIG, "extra_params": {"points_per_side": 128}}
        )
        assert ok.status_code == 200


def test_generator_stops_between_decoder_batches() -> None:
    pred = DiscPredictor()
    emb = pred.encode(np.zeros((64, 64, 3), np.uint8))
    amg = AutomaticMaskGenerator(
        pred, points_per_side=8, points_per_batch=4, should_stop=lambda: len(pred.calls) >= 3
    )
    with pytest.raises(GenerationStopped):
        amg.generate(emb)
    assert len(pred.calls) == 3
    with pytest.raises(GenerationStopped):
        AutomaticMaskGenerator(pred, points_per_batch=2, should_stop=lambda: True).generate_from_boxes(
            emb, [[0, 0, 10, 10]] * 6
        )


def test_batch_time_budget_is_enforced_inside_a_task(files) -> None:
    pred = SlowDisc(delay=0.05)
    kw = {"preannotate": "automatic", "preannotate_wait": 60.0}  # the request waits for its background job
    with make_client(
        files, pred, amg_points_per_side=16, amg_points_per_batch=4, batch_time_budget=0.3, **kw
    ) as c:
        t0 = time.monotonic()
        body = predict_body(None)
        body["tasks"].append({"id": 2, "data": {"image": "/data/local-files/?d=images/1.jpeg"}})
        r = c.post("/predict", json=body)
        took = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [[], []]
    assert took < 1.5 and len(pred.calls) < 20, (took, len(pred.calls))  # 64 batches = 3.2 s without it


def test_abandoned_batch_request_stops_consuming_cpu(files) -> None:
    import uvicorn

    pred = SlowDisc(delay=0.05)
    s = Settings.from_env(
        {},
        local_files_document_root=files,
        amg_points_per_side=32,
        amg_points_per_batch=4,
        amg_use_proposals=False,
        batch_time_budget=60,
        preannotate="automatic",  # the request waits for its background job, which it alone wants
        preannotate_wait=60.0,
    )
    app = create_app(s, pred, model_version="t")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"http://127.0.0.1:{port}/predict", json=predict_body(None), timeout=0.5)
        time.sleep(1.0)  # the server notices the disconnect
        n = len(pred.calls)
        time.sleep(0.6)
        assert len(pred.calls) == n < 100, n  # 256 batches (12.8 s) otherwise
    finally:
        server.should_exit = True
        th.join(10)


# --- 4: chunked bodies, webhook auth --------------------------------------------------------------------


def _asgi_post(
    app, path: str, chunks: int, chunk: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, int]:
    """POST a chunked body (no content-length) straight to the ASGI app; (status, chunks received)."""
    got = {"n": 0, "status": 0}

    async def receive():
        got["n"] += 1
        more = got["n"] < chunks
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(message):
        if message["type"] == "http.response.start":
            got["status"] = message["status"]

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), *headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    return got["status"], got["n"]


@pytest.mark.parametrize("route", ["/predict", "/webhook"])
def test_chunked_body_is_cut_at_the_limit_while_streaming(files, route) -> None:
    s = Settings.from_env({}, local_files_document_root=files, max_body_bytes=10_000)
    app = create_app(s, DiscPredictor(), model_version="t")
    status, received = _asgi_post(app, route, 1000, b" " * 1000, [])
    assert status == 413 and received <= 12, (status, received)


def test_webhook_requires_basic_auth_when_configured(files) -> None:
    with make_client(files, basic_auth_user="u", basic_auth_pass="p") as c:
        body = {"action": "PROJECT_UPDATED"}
        assert c.post("/webhook", json=body).status_code == 401
        assert c.post("/webhook", json=body, auth=("u", "p")).status_code == 200
    with make_client(files, basic_auth_user="u", basic_auth_pass="p", webhook_auth=False) as c:
        assert c.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 200


# --- 5: precompute ---------------------------------------------------------------------------------------


def _tasks_created(urls: list[str], start: int = 1) -> dict:
    return {
        "action": "TASKS_CREATED",
        "project": {"id": 1, "label_config": LS_CONFIG},
        "tasks": [{"id": start + i, "data": {"image": u}} for i, u in enumerate(urls)],
    }


def _wait_idle(c: TestClient, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while c.app.state.backend.precompute.pending and time.monotonic() - t0 < timeout:
        time.sleep(0.02)


def test_precompute_skips_stored_images_and_is_bounded_by_work(files) -> None:
    for i in range(20):
        (files / "images" / f"{i}.jpg").write_bytes(JPEG + bytes([i]))
    pred = SlowDisc(delay=0.0, encode_delay=0.2)
    with make_client(files, pred, precompute_max_seconds=1.0) as c:
        r = c.post("/webhook", json=_tasks_created(["/data/local-files/?d=images/1.jpeg"]))
        assert r.json()["precompute_queued"] == 1
        _wait_idle(c)
        again = c.post("/webhook", json=_tasks_created(["/data/local-files/?d=images/1.jpeg"] * 3, 10))
        assert again.json()["precompute_queued"] == 0  # already in the cache
        urls = [f"/data/local-files/?d=images/{i}.jpg" for i in range(20)]
        r = c.post("/webhook", json=_tasks_created(urls, 100))
        assert 1 <= r.json()["precompute_queued"] <= 7, r.json()  # ~1 s of work at 0.2 s per image
        _wait_idle(c)


def test_interactive_requests_take_priority_over_precompute(files) -> None:
    for i in range(6):
        (files / "images" / f"{i}.jpg").write_bytes(JPEG + bytes([i]))
    pred = SlowDisc(delay=0.0, encode_delay=0.3)
    with make_client(files, pred) as c:
        backend = c.app.state.backend
        with backend.priority.interactive():
            urls = [f"/data/local-files/?d=images/{i}.jpg" for i in range(6)]
            assert c.post("/webhook", json=_tasks_created(urls, 100)).json()["precompute_queued"] == 6
            time.sleep(0.8)
            assert len(pred.encoded_hw) == 0  # held back while a click is in flight
        _wait_idle(c)
        assert len(pred.encoded_hw) == 6


# --- 6-10 -----------------------------------------------------------------------------------------------


def test_deeply_nested_json_is_a_400(files) -> None:
    with make_client(files) as c:
        body = '{"tasks": ' + "[" * 100_000 + "]" * 100_000 + "}"
        r = c.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "nested" in r.json()["detail"]


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_a_413() -> None:
    with pytest.raises(BackendError) as exc:
        decode_image(_png_header_only(30000, 30000), 64_000_000)
    assert exc.value.status == 413 and "900000000 pixels" in exc.value.message


def test_16_bit_png_is_decoded_without_float64_copies() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 40000, (1500, 1200), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    data = buf.getvalue()
    tracemalloc.start()
    out = decode_image(data, 64_000_000)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    expect = (arr.astype(np.float64) * (255.0 / arr.max())).round().astype(np.uint8)
    assert out.shape == (1500, 1200, 3) and np.array_equal(out[..., 0], expect)
    assert peak < 3 * arr.size + arr.size * 3 + 8_000_000, peak  # float64 copies would be 14.4 MB each


def test_relative_url_with_scheme_in_query_is_relative(files) -> None:
    rec = Recorder()
    s = Settings.from_env({}, label_studio_url="http://ls.test", label_studio_api_key="k")
    f = ImageFetcher(s, transport=httpx.MockTransport(rec))
    assert f.fetch("/data/upload/1/a.jpg?next=http://x.test/y") == JPEG
    assert rec.seen == [("ls.test", "Token k")]


@pytest.mark.parametrize("query", ["d=images/1.jpeg&d=../../x", "d=images/1.jpeg&x=1", "d=images/1.jpeg&D=a"])
def test_local_files_query_must_be_a_single_d(files, query) -> None:
    s = Settings.from_env({}, label_studio_url="http://ls.test", local_files_document_root=files)
    f = ImageFetcher(s, transport=httpx.MockTransport(Recorder()))
    with pytest.raises(BackendError, match="local-files URL") as exc:
        f.fetch(f"/data/local-files/?{query}")
    assert exc.value.status == 400
    assert f.fetch("/data/local-files/?d=images/1.jpeg") == JPEG


def test_basic_scheme_is_case_insensitive(files) -> None:
    with make_client(files, basic_auth_user="u", basic_auth_pass="p") as c:
        cred = base64.b64encode(b"u:p").decode()
        for scheme in ("Basic", "basic", "BASIC"):
            assert c.get("/versions", headers={"Authorization": f"{scheme} {cred}"}).status_code == 200
        assert c.get("/versions", headers={"Authorization": f"Bearer {cred}"}).status_code == 401


def test_memory_is_trimmed_after_large_requests(files) -> None:
    with make_client(files) as c:
        assert c.post("/predict", json=predict_body(None)).status_code == 200
        assert c.app.state.trimmer.trims >= 1
        text = c.get("/metrics").text
        assert "edgesam_malloc_trims_total" in text
