"""Label Studio backend units without a model: config parsing, context, settings, cache, image
fetching (auth, SSRF guard, limits), metrics. (RLE and coordinates: tests/test_formats.py.)"""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from edgesam_backend.formats.labelstudio import coords
from edgesam_backend.labelstudio.cache import EmbeddingLRU, SingleFlight, UrlIndex
from edgesam_backend.labelstudio.config import LabelConfigError, parse_label_config
from edgesam_backend.labelstudio.context import parse_context, to_pixels
from edgesam_backend.labelstudio.errors import BackendError
from edgesam_backend.labelstudio.images import ImageFetcher, decode_image
from edgesam_backend.labelstudio.metrics import Metrics
from edgesam_backend.labelstudio.settings import Settings, SettingsError

from .helpers import LS_CONFIG, ls_keypoint, ls_rectangle

# --- label config ----------------------------------------------------------------------------------


def test_config_parses_the_protocol_example() -> None:
    cfg = parse_label_config(LS_CONFIG)
    assert cfg.image.name == "image" and cfg.image.value_key == "image"
    assert [t.name for t in cfg.brush] == ["tag"] and cfg.brush[0].type == "brushlabels"
    assert cfg.brush[0].labels == ["Foreground", "Background"]
    assert [t.name for t in cfg.keypoints] == ["tag2"] and cfg.keypoints[0].smart
    assert [t.name for t in cfg.rectangles] == ["tag3"]
    assert cfg.polygon == [] and cfg.output_labels == ["Foreground", "Background"]
    assert [t.name for t in cfg.outputs_for("Background")] == ["tag"]


def test_config_polygon_output_and_other_tags() -> None:
    cfg = parse_label_config(
        """<View><Header value="x"/><Image name="img" value="$photo"/>
        <Choices name="c" toName="img"><Choice value="a"/></Choices>
        <PolygonLabels name="poly" toName="img"><Label value="Car"/></PolygonLabels>
        <!-- a comment -->
        <BrushLabels name="b" toName="img"><Label value="Car"/><Label value="Road"/></BrushLabels>
        </View>"""
    )
    assert cfg.image.value_key == "photo"
    assert [t.name for t in cfg.outputs_for("Car")] == ["b", "poly"]
    assert [t.name for t in cfg.outputs_for("Road")] == ["b"]


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<View><Image", "not valid XML"),
        ("", "empty"),
        ('<View><BrushLabels name="t" toName="i"><Label value="a"/></BrushLabels></View>', "no <Image> tag"),
        ('<View><Image name="i" value="$image"/></View>', "no <BrushLabels>, <BitmaskLabels>"),
        (
            '<View><Image name="i" value="http://x/y.png"/>'
            '<BrushLabels name="t" toName="i"><Label value="a"/></BrushLabels></View>',
            'value="$image"',
        ),
        (
            '<View><Image name="i" value="$image"/><BrushLabels name="t" toName="other"><Label value="a"/>'
            "</BrushLabels></View>",
            "not an <Image> tag",
        ),
        ('<View><Image name="i" value="$image"/><BrushLabels name="t" toName="i"/></View>', "no <Label"),
        ('<!DOCTYPE x [<!ENTITY a "b">]><View/>', "DOCTYPE"),
    ],
)
def test_config_errors(xml: str, message: str) -> None:
    with pytest.raises(LabelConfigError, match=message.replace("$", r"\$").replace("<", "<")):
        parse_label_config(xml)


# --- interactive context ----------------------------------------------------------------------------


_kp = ls_keypoint  # units tests: 640 x 480, labelled only when positive is given


def test_context_keypoints_accumulate_with_signs() -> None:
    cfg = parse_label_config(LS_CONFIG)
    raw = parse_context({"result": [_kp(10, 20), _kp(30, 40, False), _kp(50, 60, None)]}, cfg)
    assert raw.point_labels.tolist() == [1, 0, 1]  # a missing is_positive is positive
    assert raw.label == "Foreground" and raw.rect is None
    px = to_pixels(raw, (480, 640))
    np.testing.assert_allclose(px.point_coords, [[64, 96], [192, 192], [320, 288]])
    assert px.box is None and px.output_rotation == 0


def test_context_rectangle_is_a_box() -> None:
    cfg = parse_label_config(LS_CONFIG)
    rect = ls_rectangle(64.118, 60.439, 24.907, 29.099, w=640, h=480, label="Background")
    raw = parse_context({"result": [rect]}, cfg)
    px = to_pixels(raw, (480, 640))
    assert raw.label == "Background" and px.point_coords is None
    np.testing.assert_allclose(
        px.box, [64.118 * 6.4, 60.439 * 4.8, (64.118 + 24.907) * 6.4, (60.439 + 29.099) * 4.8]
    )


def test_context_rotation_in_the_rotated_frame() -> None:
    """Sizes swapped w.r.t. the image with rotation 90: coordinates are in the rotated view."""
    cfg = parse_label_config(LS_CONFIG)
    # image 480 (H) x 640 (W); the view rotated 90° is 480 wide, 640 tall
    raw = parse_context({"result": [_kp(25, 50, w=480, h=640, rot=90)]}, cfg)
    px = to_pixels(raw, (480, 640))
    assert px.output_rotation == 90 and px.image_rotation == 90
    view = [0.25 * 480, 0.5 * 640]
    np.testing.assert_allclose(px.point_coords, [coords.unrotate_points(view, 640, 480, 90)])
    # LS 1.23.2 style (unrotated sizes): used as is, rotation echoed only
    raw = parse_context({"result": [_kp(25, 50, w=640, h=480, rot=90)]}, cfg)
    px = to_pixels(raw, (480, 640))
    assert px.output_rotation == 0 and px.image_rotation == 90
    np.testing.assert_allclose(px.point_coords, [[160, 240]])


@pytest.mark.parametrize(
    ("context", "message"),
    [
        (None, "must be an object"),
        ({"result": []}, "non-empty list"),
        ({"result": ["x"]}, r"context.result\[0\] must be an object"),
        ({"result": [{"type": "brushlabels"}]}, "no keypointlabels or rectanglelabels"),
        (
            {"result": [{**_kp(1, 2), "original_width": None}]},
            "original_width and original_height are required",
        ),
        ({"result": [_kp(150, 2)]}, r"value.x = 150 is outside 0-100"),
        ({"result": [_kp(5, -3)]}, r"value.y = -3 is outside 0-100"),
        ({"result": [_kp("a", 2)]}, "must be a finite number"),
        ({"result": [_kp(1, 2, label="Cat")]}, "label 'Cat' is not defined"),
        ({"result": [_kp(1, 2), _kp(3, 4, w=320)]}, "differs from the earlier regions"),
        ({"result": [_kp(1, 2, rot=45)]}, "multiple of 90"),
        ({"result": [{**_kp(1, 2), "is_positive": "maybe"}]}, "must be true or false"),
        ({"result": [{**_kp(1, 2), "to_name": "other"}]}, "to_name='other'"),
    ],
)
def test_context_errors(context, message: str) -> None:
    with pytest.raises(BackendError, match=message) as exc:
        parse_context(context, parse_label_config(LS_CONFIG))
    assert exc.value.status == 422


# --- settings ---------------------------------------------------------------------------------------


def test_settings_from_env_names_and_aliases() -> None:
    s = Settings.from_env(
        {
            "LABEL_STUDIO_HOST": "http://ls:8080/",
            "LABEL_STUDIO_ACCESS_TOKEN": "abc",
            "BASIC_AUTH_USER": "u",
            "BASIC_AUTH_PASS": "p",
            "PORT": "9999",
            "WORKERS": "2",
            "THREADS": "8",
            "MODEL_DIR": "/models",
            "EDGESAM_ALLOWED_HOSTS": "cdn.example.com, IMG.example.org:8443",
            "EDGESAM_MASK_CHOICE": "single",
            "EDGESAM_CACHE_MB": "64",
        }
    )
    assert s.label_studio_url == "http://ls:8080" and s.label_studio_api_key == "abc"
    assert s.basic_auth == ("u", "p") and s.port == 9999 and s.workers == 2 and s.threads == 8
    assert str(s.model_dir) == "/models" and s.mask_choice == "single" and s.cache_mb == 64
    assert s.allowed_hosts == ["cdn.example.com", "img.example.org:8443"]
    assert "abc" not in repr(s)
    d = Settings.from_env({})
    assert d.port == 9090 and d.label_studio_url is None and d.basic_auth is None


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"PORT": "x"}, "PORT"),
        ({"EDGESAM_MASK_CHOICE": "best"}, "EDGESAM_MASK_CHOICE"),
        ({"LABEL_STUDIO_URL": "ls:8080"}, "LABEL_STUDIO_URL"),
    ],
)
def test_settings_errors_name_the_variable(env, name) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


# --- cache ------------------------------------------------------------------------------------------


def test_lru_evicts_by_bytes() -> None:
    c: EmbeddingLRU[bytes] = EmbeddingLRU(10, len)
    c.put("a", b"xxxx")
    c.put("b", b"xxxx")
    assert c.get("a") == b"xxxx"  # a is now most recent
    c.put("c", b"xxxx")  # 12 > 10: evicts b
    assert "b" not in c and "a" in c and "c" in c and c.nbytes == 8 and c.evictions == 1
    c.put("big", b"x" * 11)  # larger than the budget: not cached
    assert "big" not in c and len(c) == 2


def test_single_flight_computes_once() -> None:
    c: EmbeddingLRU[str] = EmbeddingLRU(1000, len)
    calls = []
    gate = threading.Event()

    def compute() -> str:
        calls.append(1)
        gate.wait(5)
        return "value"

    out = []
    threads = [threading.Thread(target=lambda: out.append(c.get_or_compute("k", compute))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert len(calls) == 1 and len(out) == 8 and all(v == "value" for v, _ in out)
    assert c.get_or_compute("k", compute) == ("value", True)


def test_single_flight_shares_errors_and_forgets_them() -> None:
    sf: SingleFlight[int] = SingleFlight()

    def boom() -> int:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        sf.do("k", boom)
    assert sf.do("k", lambda: 3) == (3, False)


def test_url_index_ttl() -> None:
    idx = UrlIndex(ttl=0.05)
    idx.put("u", "d1")
    assert idx.get("u") == "d1"
    time.sleep(0.08)
    assert idx.get("u") is None
    assert UrlIndex(ttl=0).get("u") is None


# --- image fetching ---------------------------------------------------------------------------------


def _png(w: int = 8, h: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _jwt(claims: dict) -> str:
    def enc(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    return f"{enc({'alg': 'HS256'})}.{enc(claims)}.sig"


class FakeLS:
    """An httpx MockTransport standing in for Label Studio and a few other hosts."""

    def __init__(self, token: str = "legacy-token", pat: str | None = None) -> None:
        self.token, self.pat = token, pat
        self.requests: list[httpx.Request] = []
        self.access_counter = 0
        self.expire_next = False

    def authorized(self, req: httpx.Request) -> bool:
        auth = req.headers.get("authorization", "")
        if self.pat:
            ok = auth == f"Bearer access-{self.access_counter}" and self.access_counter > 0
            if ok and self.expire_next:
                self.expire_next = False
                return False
            return ok
        return auth == f"Token {self.token}"

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests.append(req)
        host, path = req.url.host, req.url.path
        if host == "ls.test":
            if path == "/api/token/refresh/":
                if json.loads(req.content) != {"refresh": self.pat}:
                    return httpx.Response(401, json={"detail": "bad"})
                self.access_counter += 1
                return httpx.Response(200, json={"access": f"access-{self.access_counter}"})
            if not self.authorized(req):
                return httpx.Response(401, json={"detail": "Authentication credentials were not provided."})
            if path.startswith("/data/upload/"):
                return httpx.Response(200, content=_png())
            if path == "/data/local-files/":
                return httpx.Response(200, content=_png(4, 4))
            if path.startswith("/tasks/7/presign/"):
                return httpx.Response(303, headers={"location": "https://bucket.example.com/a.png?sig=1"})
            if path == "/redirect-internal":
                return httpx.Response(302, headers={"location": "http://10.0.0.5/secret"})
            if path == "/big":
                return httpx.Response(200, content=b"x" * 5000)
            return httpx.Response(404)
        if host == "bucket.example.com":
            assert "authorization" not in req.headers  # the LS token never leaves the LS host
            return httpx.Response(200, content=_png(2, 2))
        if host == "cdn.test":
            return httpx.Response(200, content=_png(3, 3), headers={"content-length": "99999999"})
        raise httpx.ConnectError("connection refused", request=req)


def _fetcher(fake: FakeLS, key: str | None = "legacy-token", **kw) -> ImageFetcher:
    resolver = kw.pop("resolver", lambda host, port: ["93.184.216.34"])
    s = Settings.from_env({}, label_studio_url="http://ls.test", label_studio_api_key=key, **kw)
    return ImageFetcher(s, transport=httpx.MockTransport(fake), resolver=resolver)


def test_fetch_legacy_token_upload_and_local_files() -> None:
    fake = FakeLS()
    f = _fetcher(fake)
    assert f.fetch("/data/upload/1/abc-x.png") == _png()
    assert fake.requests[-1].headers["authorization"] == "Token legacy-token"
    assert f.fetch("/data/local-files/?d=images/x.png") == _png(4, 4)
    assert f.fetch("http://ls.test/data/upload/1/abc-x.png") == _png()


def test_fetch_personal_access_token_exchange_and_refresh() -> None:
    pat = _jwt({"token_type": "refresh", "exp": 4102444800})
    fake = FakeLS(pat=pat)
    f = _fetcher(fake, key=pat)
    assert f.auth.is_pat
    assert f.fetch("/data/upload/1/a.png") == _png()
    assert fake.access_counter == 1
    assert fake.requests[-1].headers["authorization"] == "Bearer access-1"
    f.fetch("/data/upload/1/a.png")
    assert fake.access_counter == 1  # cached access token
    fake.expire_next = True  # LS says 401: exchange again and retry once
    assert f.fetch("/data/upload/1/a.png") == _png()
    assert fake.access_counter == 2


def test_fetch_bad_pat_and_missing_key_messages() -> None:
    pat = _jwt({"token_type": "refresh"})
    f = _fetcher(FakeLS(pat="other"), key=pat)
    with pytest.raises(BackendError, match="refused the Personal Access Token"):
        f.fetch("/data/upload/1/a.png")
    f = _fetcher(FakeLS(), key=None)
    with pytest.raises(BackendError, match="set LABEL_STUDIO_API_KEY") as exc:
        f.fetch("/data/upload/1/a.png")
    assert exc.value.status == 424


def test_fetch_cloud_uri_via_presign_without_leaking_auth() -> None:
    fake = FakeLS()
    f = _fetcher(fake)
    assert f.fetch("s3://bucket/a.png", task_id=7) == _png(2, 2)
    presign = fake.requests[0]
    assert presign.url.path == "/tasks/7/presign/"
    assert base64.urlsafe_b64decode(presign.url.params["fileuri"]).decode() == "s3://bucket/a.png"
    assert f.identity("s3://bucket/a.png", 7) == "s3://bucket/a.png"
    with pytest.raises(BackendError, match="needs the task id"):
        f.fetch("gs://bucket/a.png")


def test_fetch_ssrf_guard() -> None:
    fake = FakeLS()
    with pytest.raises(BackendError, match="not allowed") as exc:
        _fetcher(fake).fetch("http://169.254.169.254/latest/meta-data/")
    assert exc.value.status == 403
    # a redirect from Label Studio to an internal address is refused too
    with pytest.raises(BackendError, match="non-public address"):
        _fetcher(fake, resolver=lambda h, p: ["10.0.0.5"]).fetch("/redirect-internal")
    # "*" allows public hosts only
    f = _fetcher(fake, allowed_hosts=["*"], resolver=lambda h, p: ["127.0.0.1"])
    with pytest.raises(BackendError, match="non-public address"):
        f.fetch("http://bucket.example.com/a.png")
    f = _fetcher(fake, allowed_hosts=["*"])
    assert f.fetch("http://bucket.example.com/a.png") == _png(2, 2)
    # an explicitly listed host is trusted as given
    f = _fetcher(fake, allowed_hosts=["bucket.example.com"], resolver=lambda h, p: ["10.1.2.3"])
    assert f.fetch("https://bucket.example.com/a.png") == _png(2, 2)
    with pytest.raises(BackendError, match="unsupported image URL scheme 'file'"):
        _fetcher(fake).fetch("file:///etc/passwd")


def test_fetch_path_traversal() -> None:
    f = _fetcher(FakeLS())
    for url in (
        "/data/local-files/?d=../../etc/passwd",
        "/data/local-files/?d=/etc/passwd",
        "/data/upload/../../secret",
        "/data/local-files/?d=images/%2e%2e/%2e%2e/x",
    ):
        with pytest.raises(BackendError, match="traversal") as exc:
            f.fetch(url)
        assert exc.value.status == 400


def test_fetch_local_files_root(tmp_path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(_png())
    (tmp_path.parent / "outside.png").write_bytes(_png())
    (tmp_path / "images" / "link.png").symlink_to(tmp_path.parent / "outside.png")
    f = _fetcher(FakeLS(), local_files_document_root=tmp_path)
    assert f.fetch("/data/local-files/?d=images/a.png") == _png()
    with pytest.raises(BackendError, match="outside LOCAL_FILES_DOCUMENT_ROOT"):
        f.fetch("/data/local-files/?d=images/link.png")
    with pytest.raises(BackendError, match="not found") as exc:
        f.fetch("/data/local-files/?d=images/missing.png")
    assert exc.value.status == 404


def test_fetch_size_limits_and_unreachable() -> None:
    f = _fetcher(FakeLS(), max_image_bytes=1000, allowed_hosts=["cdn.test", "down.test"])
    with pytest.raises(BackendError, match="over the limit of 1000") as exc:
        f.fetch("/big")
    assert exc.value.status == 413
    with pytest.raises(BackendError, match="99999999 bytes, over the limit") as exc:
        f.fetch("http://cdn.test/a.png")
    assert exc.value.status == 413
    with pytest.raises(BackendError, match="cannot reach") as exc:
        f.fetch("http://down.test/a.png")
    assert exc.value.status == 424
    with pytest.raises(BackendError, match="not found") as exc:
        f.fetch("/nothing-here.png")  # 404 from Label Studio
    assert exc.value.status == 404


def test_fetch_relative_url_without_label_studio() -> None:
    f = ImageFetcher(Settings.from_env({}))
    with pytest.raises(BackendError, match="set LABEL_STUDIO_URL"):
        f.fetch("/data/upload/1/a.png")
    f.set_fallback("http://ls.example:8080", "tok")  # from /setup
    assert f.base_url == "http://ls.example:8080"


def test_fetch_data_uri() -> None:
    f = _fetcher(FakeLS())
    uri = "data:image/png;base64," + base64.b64encode(_png()).decode()
    assert f.fetch(uri) == _png()
    assert f.identity(uri).startswith("data:sha256:")


def test_decode_image_errors() -> None:
    assert decode_image(_png(8, 6), 1000).shape == (6, 8, 3)
    with pytest.raises(BackendError, match="not a decodable image") as exc:
        decode_image(b"<html>nope</html>", 1000)
    assert exc.value.status == 422
    with pytest.raises(BackendError, match="over the limit of 40") as exc:
        decode_image(_png(8, 6), 40)
    assert exc.value.status == 413


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_text_format() -> None:
    m = Metrics()
    m.requests.inc("/predict", "POST", "200")
    m.latency.observe(0.02, "/predict", "POST")
    m.latency.observe(7.0, "/predict", "POST")
    m.cache_hits.inc()
    text = m.render()
    assert "# TYPE edgesam_http_requests_total counter" in text
    assert 'edgesam_http_requests_total{route="/predict",method="POST",status="200"} 1' in text
    assert 'edgesam_http_request_duration_seconds_bucket{route="/predict",method="POST",le="0.025"} 1' in text
    assert 'edgesam_http_request_duration_seconds_bucket{route="/predict",method="POST",le="+Inf"} 2' in text
    assert 'edgesam_http_request_duration_seconds_count{route="/predict",method="POST"} 2' in text
    assert "edgesam_embedding_cache_hits_total 1" in text
    assert "process_resident_memory_bytes" in text


def test_fetch_timeout_message() -> None:
    def slow(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=req)

    s = Settings.from_env({}, label_studio_url="http://ls.test", fetch_timeout=2.5)
    f = ImageFetcher(s, transport=httpx.MockTransport(slow))
    with pytest.raises(BackendError, match=r"timed out after 2\.5 s") as exc:
        f.fetch("/data/upload/1/a.png")
    assert exc.value.status == 424
    assert Settings.from_env({"EDGESAM_BATCH": "false"}).batch is False
