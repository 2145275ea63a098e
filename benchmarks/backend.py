"""Label Studio backend latency through HTTP: prints one JSON object.

Runs ``edgesam serve`` in its own process (onnxruntime, the real app) against a stand-in for Label
Studio's ``/data/upload/`` (a loopback HTTP server in this process with token auth), and measures:

* ``cached_click``: single-point clicks on an image whose embedding is cached (p50, p95, mean);
* ``cached_click_points3`` / ``cached_click_box``: three ± points, a box (token 0);
* ``first_click``: the first click on a new image (download + decode + encode + decode), images resized
  to 1024 px on the long side;
* ``concurrent``: C clients x N clicks at once over a few images (errors, p50/p95, throughput), and the
  server's peak RSS.

* ``--soak``: C clients x N clicks on random images, more of them (``--soak-images``) than the cache
  (``--cache-mb``) holds: errors, p50/p95/p99, and the server's RSS at start, peak, end of load and
  after ``--idle`` seconds (the plateau: freed memory is trimmed back to the OS after requests).

Opt-in modes (``benchmarks/backend_modes.py``; any of them replaces the default run, they combine, each
has its own baseline in the same run and prints under its own key):

* ``--int8`` (key ``int8``): an fp32 and an int8 (``EDGESAM_PRECISION=int8``) server side by side, clicks
  interleaved: ``new_image_1024px`` and ``cached_click`` p50/p95 for each, ``int8_over_fp32`` ratios, and
  ``bare_decoder`` (``OnnxPredictor.predict_selected`` on a cached embedding, in this process, interleaved)
  with ``cached_click_over_bare_decoder_p50``. ``encoder.int8.onnx`` is written next to ``encoder.onnx``
  if absent (the project's int8 export, calibrated on ``--int8-calibration`` of the benchmark's images);
* ``--store-restart`` (key ``store_restart``): first click on ``--store-images`` images with
  ``EDGESAM_EMBEDDING_STORE`` (encodes), restart, first click again (store hits): per-image latencies and
  the server's ``edgesam_embedding_store_total`` hit/miss and encoder-run counts;
* ``--task-open`` (key ``task_open``): a real Label Studio 1.23.2 (tests/e2e_labelstudio/ls_server.py;
  1-4 min to start), ``--task-open-tasks`` tasks per project, one project with the default
  ``from-prompts`` and one with ``preannotate=automatic``: ``GET /api/tasks/{id}`` (what opening a task
  asks; Label Studio calls the backend's ``/predict`` before answering) wall time, and the backend's own
  seconds per route from its ``/metrics``.

Targets on 2 cores: cached click p50 <= 60 ms; first click <= 0.7 s at 1024 px; zero errors; cached
click <= 1.5x the bare decoder call; task open <= 1 s of backend time.

Usage: python benchmarks/backend.py [--onnx-dir DIR] [--clicks 100] [--clients 8]
       [--clicks-per-client 100] [--threads N] [--out result.json]
       python benchmarks/backend.py --soak --clients 4 --clicks-per-client 300 --soak-images 20 --cache-mb 64
       python benchmarks/backend.py --int8 --store-restart --task-open [--clicks 100] [--new-images 6]
Without ``--onnx-dir`` the random-weight reference checkpoint in ../shared is exported (once, cached);
its speed equals the real model's (same architecture). ``--device`` / ``--precision`` reach every server
as ``EDGESAM_DEVICE`` / ``EDGESAM_PRECISION`` (fp16 pairs are converted next to the ONNX files when asked
for; ``--int8`` keeps its fp32-vs-int8 pair) and the in-process predictors as the same options.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import backend_modes
import httpx
from _common import add_model_arguments, emit_result, ensure_precision_files, model_env
from backend_common import (
    DEFAULT_CKPT,
    SIZES,
    body,
    click,
    image_server,
    kp,
    make_images,
    peak_rss,
    rect,
    server_means,
    start_backend,
    stats_ms,
    wait_healthy,
)


def run_clients(
    base: str, clients: int, clicks: int, payload: Callable[[random.Random, int], dict]
) -> tuple[list[float], int, float]:
    """``clients`` threads x ``clicks`` clicks, ``payload(rng, client)`` each; (latencies, errors, wall s)."""
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client_loop(k: int) -> None:
        nonlocal errors
        r = random.Random(k)
        with httpx.Client(base_url=base, timeout=120) as cc:
            for _ in range(clicks):
                dt, ok = click(cc, payload(r, k))
                with lock:
                    lat.append(dt)
                    errors += not ok

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, errors, time.perf_counter() - t0


def soak(args: argparse.Namespace, onnx_dir: Path) -> dict:
    """N clients x M clicks over more images than the cache holds (every miss downloads and encodes
    again): errors, latency p50/p95/p99 and the server's RSS at start, peak and after ``--idle`` s."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = make_images(root, args.soak_images)
        srv, ls_url = image_server(root)
        proc, base = start_backend(
            onnx_dir,
            ls_url,
            max(4, args.clients),
            args.threads,
            EDGESAM_CACHE_MB=str(args.cache_mb),
            **model_env(args),
        )
        try:
            wait_healthy(proc, base)
            rss_start = peak_rss(proc.pid).get("rss_mb")

            def payload(r: random.Random, k: int) -> dict:
                i = r.randrange(len(images))
                name, w, h = images[i]
                return body(1000 + i, name, [kp(r.uniform(5, 95), r.uniform(5, 95), w, h)])

            lat, errors, wall = run_clients(base, args.clients, args.clicks_per_client, payload)
            busy = peak_rss(proc.pid)
            time.sleep(args.idle)
            idle = peak_rss(proc.pid)
            lat.sort()
            q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
            return {
                "mode": "soak",
                "clients": args.clients,
                "clicks_per_client": args.clicks_per_client,
                "images": len(images),
                "cache_mb": args.cache_mb,
                "errors": errors,
                "p50_ms": round(q[49] * 1000, 1),
                "p95_ms": round(q[94] * 1000, 1),
                "p99_ms": round(q[98] * 1000, 1),
                "wall_s": round(wall, 2),
                "rss_mb": {
                    "start": rss_start,
                    "peak": busy.get("peak_rss_mb"),
                    "end_of_load": busy.get("rss_mb"),
                    f"idle_{args.idle:g}s": idle.get("rss_mb"),
                },
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            srv.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx-dir", type=Path)
    ap.add_argument("--clicks", type=int, default=100)
    ap.add_argument("--new-images", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--clicks-per-client", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--soak", action="store_true", help="soak mode: --clients x --clicks-per-client")
    ap.add_argument("--soak-images", type=int, default=24, help="soak: images (more than the cache holds)")
    ap.add_argument("--cache-mb", type=float, default=64, help="soak: EDGESAM_CACHE_MB (4 MB per image)")
    ap.add_argument("--idle", type=float, default=10, help="soak: seconds idle before the last RSS")
    ap.add_argument("--int8", action="store_true", help="fp32 vs int8 encoder + the bare decoder call")
    ap.add_argument("--int8-calibration", type=int, default=4, help="int8: images to calibrate on if needed")
    ap.add_argument("--store-restart", action="store_true", help="embedding store hits after a restart")
    ap.add_argument("--store-images", type=int, default=6, help="store-restart: images")
    ap.add_argument("--task-open", action="store_true", help="task open through a real Label Studio")
    ap.add_argument("--task-open-tasks", type=int, default=3, help="task-open: tasks per project")
    add_model_arguments(ap)
    args = ap.parse_args()

    onnx_dir = args.onnx_dir
    if onnx_dir is None:
        from edgesam_backend.runtime.resolve import resolve_model

        onnx_dir = resolve_model(DEFAULT_CKPT).encoder.parent
    ensure_precision_files(onnx_dir, args.precision)
    modes = [m for m in ("int8", "store_restart", "task_open") if getattr(args, m)]
    if modes:
        result = {
            "device": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        }
        for m in modes:
            result[m] = getattr(backend_modes, f"{m}_mode")(args, onnx_dir)
        result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
        emit_result(result, args.out)
        return
    if args.soak:
        emit_result(soak(args, onnx_dir), args.out)
        return
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        n_images = args.new_images + 5
        images = make_images(root, n_images)
        srv, ls_url = image_server(root)
        proc, base = start_backend(onnx_dir, ls_url, max(8, args.clients), args.threads, **model_env(args))
        result: dict = {
            "device": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        }
        try:
            wait_healthy(proc, base)
            with httpx.Client(base_url=base, timeout=120) as c:
                # first click on new images (incl. download, decode, encode)
                firsts = []
                for i, (name, w, h) in enumerate(images[: args.new_images]):
                    dt, ok = click(c, body(i, name, [kp(50, 50, w, h)]))
                    assert ok, f"first click on {name} failed"
                    firsts.append(dt)
                result["first_click_1024px"] = stats_ms(firsts)
                # cached clicks on one image
                name, w, h = images[0]
                for _ in range(3):
                    click(c, body(0, name, [kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h)]))
                ts = [
                    click(
                        c, body(0, name, [kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h)]), "cached_click"
                    )[0]
                    for _ in range(args.clicks)
                ]
                result["cached_click"] = stats_ms(ts)
                result["cached_click"]["response_kb_p50"] = round(
                    statistics.median(SIZES["cached_click"]) / 1024, 1
                )
                pts3 = [
                    [
                        kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h, True),
                        kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h, False),
                        kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h, True),
                    ]
                    for _ in range(max(10, args.clicks // 4))
                ]
                result["cached_click_points3"] = stats_ms(
                    [click(c, body(0, name, p), "points3")[0] for p in pts3]
                )
                result["cached_click_points3"]["response_kb_p50"] = round(
                    statistics.median(SIZES["points3"]) / 1024, 1
                )
                boxes = [
                    [
                        rect(
                            rng.uniform(5, 45),
                            rng.uniform(5, 45),
                            rng.uniform(10, 50),
                            rng.uniform(10, 50),
                            w,
                            h,
                        )
                    ]
                    for _ in range(max(10, args.clicks // 4))
                ]
                result["cached_click_box"] = stats_ms([click(c, body(0, name, b), "box")[0] for b in boxes])
                result["cached_click_box"]["response_kb_p50"] = round(
                    statistics.median(SIZES["box"]) / 1024, 1
                )
                result["server_side_means_so_far"] = server_means(c.get("/metrics").text)

            # concurrent clients: each works on one of 4 images (two of them new, so encodes overlap clicks)
            pool = images[args.new_images - 2 : args.new_images + 2]

            def pool_click(r: random.Random, k: int) -> dict:
                name, w, h = pool[k % len(pool)]
                return body(100 + k % len(pool), name, [kp(r.uniform(5, 95), r.uniform(5, 95), w, h)])

            lat, errors, wall = run_clients(base, args.clients, args.clicks_per_client, pool_click)
            result["concurrent"] = {
                "clients": args.clients,
                "clicks_per_client": args.clicks_per_client,
                "errors": errors,
                **stats_ms(lat),
                "wall_s": round(wall, 2),
                "clicks_per_s": round(len(lat) / wall, 1),
            }
            metrics = httpx.get(f"{base}/metrics", timeout=10).text
            for line in metrics.splitlines():
                if line.startswith(
                    ("edgesam_embedding_cache_hits_total ", "edgesam_embedding_cache_misses_total ")
                ):
                    k, v = line.split()
                    result.setdefault("cache", {})[k.removeprefix("edgesam_embedding_cache_")] = int(float(v))
            result["server"] = peak_rss(proc.pid)
            result["note"] = (
                "random reference weights: their masks are noisy, so the brush RLE payloads are far larger "
                "(hundreds of KB) than a trained model's smooth masks (a few KB); see response_kb_p50"
            )
            result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
            fc, cc_ = result["first_click_1024px"], result["cached_click"]
            result["targets"] = {
                "cached_click_p50_le_60ms": cc_["p50_ms"] <= 60,
                "first_click_le_700ms": fc["p50_ms"] <= 700,
                "zero_errors": result["concurrent"]["errors"] == 0,
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            srv.shutdown()
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
