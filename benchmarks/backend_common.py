"""Shared pieces of the backend benchmarks (:mod:`backend`, :mod:`backend_modes`): test images, a
stand-in for Label Studio's ``/data/upload/``, Label Studio request bodies, ``edgesam serve`` in a
subprocess, latency statistics and a Prometheus text parser."""

from __future__ import annotations

import http.server
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMAGES = SHARED / "images"
DEFAULT_CKPT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
TOKEN = "bench-token-0123456789"
CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Foreground"/><Label value="Background"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Foreground"/></KeyPointLabels>
<RectangleLabels name="rect" toName="image" smart="true"><Label value="Foreground"/></RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_images(out: Path, n: int) -> list[tuple[str, int, int]]:
    """``n`` photos resized to 1024 px on the long side → [(name, width, height)]."""
    from PIL import Image

    srcs = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    res = []
    for i in range(n):
        src = srcs[i % len(srcs)]
        with Image.open(src) as im:
            im = im.convert("RGB")
            s = 1024 / max(im.size)
            im = im.resize((round(im.width * s), round(im.height * s)), Image.Resampling.BILINEAR)
            if i >= len(srcs):  # distinct content for repeated sources
                im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            name = f"img{i:02d}.jpg"
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            (out / name).write_bytes(buf.getvalue())
            res.append((name, im.width, im.height))
    return res


def image_server(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != f"Token {TOKEN}":
                self.send_error(401)
                return
            name = self.path.rsplit("/", 1)[-1]
            p = root / name
            if not self.path.startswith("/data/upload/") or not p.is_file():
                self.send_error(404)
                return
            data = p.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def kp(x: float, y: float, w: int, h: int, positive: bool = True) -> dict:
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": ["Foreground"]},
        "is_positive": positive,
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
    }


def rect(x: float, y: float, bw: float, bh: float, w: int, h: int) -> dict:
    return {
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": bw,
            "height": bh,
            "rotation": 0,
            "rectanglelabels": ["Foreground"],
        },
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
    }


def body(task_id: int, name: str, ctx: list[dict]) -> dict:
    return {
        "tasks": [{"id": task_id, "data": {"image": f"/data/upload/1/{name}"}}],
        "project": "1.1",
        "label_config": CONFIG,
        "params": {"context": {"result": ctx}},
    }


def stats_ms(ts: list[float]) -> dict[str, float]:
    ts = sorted(ts)
    q = statistics.quantiles(ts, n=100, method="inclusive") if len(ts) > 1 else [ts[0]] * 99
    return {
        "n": len(ts),
        "p50_ms": round(statistics.median(ts) * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "mean_ms": round(statistics.fmean(ts) * 1000, 1),
        "max_ms": round(ts[-1] * 1000, 1),
    }


SIZES: dict[str, list[int]] = {}


#: Pause before each measured call in the interleaved modes. onnxruntime's worker threads spin for a
#: while after a run; back to back, one process's spinning pool steals a core from the next process's
#: call (measured: a cached click 172 ms right after the bare decoder call, 120 ms 0.1 s later). An
#: annotator's clicks are seconds apart, so the pause measures what they feel.
CALL_GAP_S = 0.1


def click(client: httpx.Client, payload: dict, kind: str = "other") -> tuple[float, bool]:
    """``(seconds from sending the request to the whole response received, answered with a region)``;
    the client's JSON parse is not timed (a browser parses on its own thread)."""
    t = time.perf_counter()
    try:
        r = client.post("/predict", json=payload)
        dt = time.perf_counter() - t
        ok = r.status_code == 200 and bool(r.json()["results"][0]["result"])
        SIZES.setdefault(kind, []).append(len(r.content))
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        dt, ok = time.perf_counter() - t, False
    return dt, ok


def server_means(metrics: str) -> dict[str, float]:
    """Mean server-side seconds from the Prometheus histograms (sum / count)."""
    vals: dict[str, float] = {}
    for line in metrics.splitlines():
        for key, prefix in (
            ("decode_interactive", 'edgesam_decode_seconds_{}{{mode="interactive"}} '),
            ("encode", "edgesam_encode_seconds_{} "),
            ("http_predict", 'edgesam_http_request_duration_seconds_{}{{route="/predict",method="POST"}} '),
        ):
            for part in ("sum", "count"):
                if line.startswith(prefix.format(part)):
                    vals[f"{key}_{part}"] = float(line.split()[-1])
    out = {}
    for key in ("decode_interactive", "encode", "http_predict"):
        if vals.get(f"{key}_count"):
            out[f"{key}_mean_ms"] = round(vals[f"{key}_sum"] / vals[f"{key}_count"] * 1000, 1)
    return out


def peak_rss(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[{"VmHWM": "peak_rss_mb", "VmRSS": "rss_mb"}[k]] = int(v.split()[0]) // 1024
    except OSError:
        pass
    return out


def start_backend(
    onnx_dir: Path, ls_url: str, threads: int, intra_op: int | None, **env_extra: str
) -> tuple[subprocess.Popen, str]:
    """``edgesam serve`` on a free port with the stand-in Label Studio at ``ls_url``; (process, base)."""
    port = free_port()
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "THREADS": str(threads),
        "LOG_LEVEL": "WARNING",
        **env_extra,
    }
    if intra_op:
        env["EDGESAM_INTRA_OP_THREADS"] = str(intra_op)
    cmd = [sys.executable, "-m", "edgesam_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--onnx-dir", str(onnx_dir)], env=env)
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("edgesam serve did not start")
        time.sleep(0.2)


def stop_backend(proc: subprocess.Popen) -> None:
    """Stop ``edgesam serve`` (its own PID only): SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text format → ``{(name, frozenset of (label, value)): value}`` (comments skipped)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        pairs = []
        for item in labels.rstrip("}").split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                pairs.append((k.strip(), v.strip().strip('"')))
        try:
            out[(name, frozenset(pairs))] = float(value)
        except ValueError:
            continue
    return out


def metric(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample of :func:`parse_metrics` output (0 when absent)."""
    return metrics.get((name, frozenset(labels.items())), 0.0)


def route_seconds(
    before: dict[tuple[str, frozenset[tuple[str, str]]], float],
    after: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[str, dict[str, float]]:
    """Server-side time spent per HTTP route between two :func:`parse_metrics` snapshots:
    ``{"POST /predict": {"requests": n, "seconds": s}}`` (from ``edgesam_http_request_duration_seconds``)."""
    out: dict[str, dict[str, float]] = {}
    for (name, labels), count in after.items():
        if name != "edgesam_http_request_duration_seconds_count":
            continue
        n = count - before.get((name, labels), 0.0)
        if n <= 0:
            continue
        lab = dict(labels)
        total = "edgesam_http_request_duration_seconds_sum"
        s = after.get((total, labels), 0.0) - before.get((total, labels), 0.0)
        out[f"{lab.get('method', '?')} {lab.get('route', '?')}"] = {
            "requests": int(n),
            "seconds": round(s, 4),
        }
    return out
