"""Opt-in modes of ``benchmarks/backend.py`` (each returns one JSON-able dict; see that file's docstring):

* :func:`int8_mode` (``--int8``): fp32 vs int8 encoder in ``edgesam serve`` (two servers, clicks
  interleaved), and the bare decoder call in this process, all in the same run;
* :func:`store_restart_mode` (``--store-restart``): first clicks before and after a restart with the
  persistent embedding store;
* :func:`task_open_mode` (``--task-open``): opening a task through a real Label Studio 1.23.2.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _common import model_env
from backend_common import (
    CALL_GAP_S,
    CONFIG,
    ROOT,
    body,
    click,
    image_server,
    kp,
    make_images,
    metric,
    parse_metrics,
    route_seconds,
    server_means,
    start_backend,
    stats_ms,
    stop_backend,
    wait_healthy,
)

from edgesam_backend.runtime.model_files import INT8_ENCODER_FILE


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def ensure_int8(onnx_dir: Path, calibration: list[Path]) -> dict:
    """``encoder.int8.onnx`` next to ``encoder.onnx`` in ``onnx_dir``: written with the project's int8
    export (:func:`edgesam_backend.export.int8.quantize_encoder`, as ``edgesam export --int8``) when
    absent, calibrating on ``calibration`` (image files). Returns what was done."""
    path = onnx_dir / INT8_ENCODER_FILE
    if path.is_file():
        return {"encoder": str(path), "written_now": False}
    from edgesam_backend.export.int8 import quantize_encoder

    t = time.perf_counter()
    quantize_encoder(onnx_dir / "encoder.onnx", path, calibration)
    return {
        "encoder": str(path),
        "written_now": True,
        "calibration_images": len(calibration),
        "quantize_s": round(time.perf_counter() - t, 1),
    }


def int8_mode(args: argparse.Namespace, onnx_dir: Path) -> dict:
    """New-image (download + encode + decode) and cached-click latency of ``edgesam serve`` with the
    fp32 and the int8 encoder, two servers at once with their clicks interleaved (same load), and the
    bare decoder call (``OnnxPredictor.predict_selected`` on a cached embedding, the server's
    single-click path minus HTTP, JSON and RLE) in this process, interleaved with them."""
    from edgesam_backend.engine import load_predictor
    from edgesam_backend.runtime.image import load_image

    rng = random.Random(0)
    variants = ("fp32", "int8")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images = make_images(root, args.new_images + 1)
        out: dict = {
            "int8_encoder": ensure_int8(onnx_dir, [root / n for n, _, _ in images[: args.int8_calibration]])
        }
        srv, ls_url = image_server(root)
        procs = {
            v: start_backend(onnx_dir, ls_url, 4, args.threads, **{**model_env(args), "EDGESAM_PRECISION": v})
            for v in variants
        }
        try:
            for proc, base in procs.values():
                wait_healthy(proc, base)
            clients = {v: httpx.Client(base_url=base, timeout=120) for v, (_, base) in procs.items()}
            lat: dict[str, dict[str, list[float]]] = {v: {"new": [], "cached": []} for v in variants}
            for i, (name, w, h) in enumerate(images[1:], start=1):  # new images, interleaved
                for v in variants:
                    dt, ok = click(clients[v], body(i, name, [kp(50, 50, w, h)]))
                    assert ok, f"{v}: first click on {name} failed"
                    lat[v]["new"].append(dt)
            name, w, h = images[0]
            for v in variants:  # encode image 0 and warm up
                for _ in range(3):
                    click(clients[v], body(0, name, [kp(rng.uniform(5, 95), rng.uniform(5, 95), w, h)]))
            predictor = load_predictor(
                onnx_dir=onnx_dir, threads=args.threads, device=args.device, precision="fp32"
            )
            emb = predictor.encode(load_image(root / name))
            bare: list[float] = []
            for _ in range(3):
                predictor.predict_selected(
                    [[w / 2, h / 2]], [1], select="stability", num_multimask_outputs=3, embedding=emb
                )
            for _ in range(args.clicks):
                x, y = rng.uniform(5, 95), rng.uniform(5, 95)
                for v in variants:
                    time.sleep(CALL_GAP_S)
                    dt, ok = click(clients[v], body(0, name, [kp(x, y, w, h)]))
                    assert ok, f"{v}: cached click failed"
                    lat[v]["cached"].append(dt)
                pt = np.array([[x / 100 * w, y / 100 * h]])
                time.sleep(CALL_GAP_S)
                t = time.perf_counter()
                predictor.predict_selected(
                    pt, np.array([1]), select="stability", num_multimask_outputs=3, embedding=emb
                )
                bare.append(time.perf_counter() - t)
            out["bare_decoder"] = stats_ms(bare)
            for v in variants:
                new, cached = stats_ms(lat[v]["new"]), stats_ms(lat[v]["cached"])
                out[v] = {
                    "new_image_1024px": new,
                    "cached_click": cached,
                    "cached_click_over_bare_decoder_p50": _ratio(
                        cached["p50_ms"], out["bare_decoder"]["p50_ms"]
                    ),
                    "server_side_means": server_means(clients[v].get("/metrics").text),
                }
                clients[v].close()
            f, q = out["fp32"], out["int8"]
            out["int8_over_fp32"] = {
                "new_image_p50": _ratio(q["new_image_1024px"]["p50_ms"], f["new_image_1024px"]["p50_ms"]),
                "new_image_p95": _ratio(q["new_image_1024px"]["p95_ms"], f["new_image_1024px"]["p95_ms"]),
                "cached_click_p50": _ratio(q["cached_click"]["p50_ms"], f["cached_click"]["p50_ms"]),
                "cached_click_p95": _ratio(q["cached_click"]["p95_ms"], f["cached_click"]["p95_ms"]),
            }
            out["targets"] = {
                f"{v}_cached_click_le_1.5x_bare_decoder": (out[v]["cached_click_over_bare_decoder_p50"] or 99)
                <= 1.5
                for v in variants
            }
        finally:
            for proc, _ in procs.values():
                stop_backend(proc)
            srv.shutdown()
    return out


def store_restart_mode(args: argparse.Namespace, onnx_dir: Path) -> dict:
    """First click on each of ``--store-images`` images with ``EDGESAM_EMBEDDING_STORE`` set (misses:
    encode, then stored), restart ``edgesam serve`` on the same store, first click on the same images
    again (store hits, no encoder run): per-image latencies and the server's store/encode counters."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = make_images(root / "images", args.store_images)
        srv, ls_url = image_server(root / "images")
        out: dict = {"images": len(images)}
        try:
            for phase in ("before_restart", "after_restart"):
                proc, base = start_backend(
                    onnx_dir,
                    ls_url,
                    4,
                    args.threads,
                    EDGESAM_EMBEDDING_STORE=str(root / "store"),
                    **model_env(args),
                )
                try:
                    wait_healthy(proc, base)
                    ts = []
                    with httpx.Client(base_url=base, timeout=120) as c:
                        for i, (name, w, h) in enumerate(images):
                            dt, ok = click(c, body(i, name, [kp(50, 50, w, h)]))
                            assert ok, f"{phase}: first click on {name} failed"
                            ts.append(dt)
                        m = parse_metrics(c.get("/metrics").text)
                    out[phase] = {
                        "first_click_ms": [round(t * 1000, 1) for t in ts],
                        **stats_ms(ts),
                        "store_hits": int(metric(m, "edgesam_embedding_store_total", outcome="hit")),
                        "store_misses": int(metric(m, "edgesam_embedding_store_total", outcome="miss")),
                        "encoder_runs": int(metric(m, "edgesam_encode_seconds_count")),
                    }
                finally:
                    stop_backend(proc)
        finally:
            srv.shutdown()
        files = [p for p in (root / "store").rglob("*") if p.is_file()]
        out["store_files"] = len(files)
        out["store_mb"] = round(sum(p.stat().st_size for p in files) / 2**20, 1)
        b, a = out["before_restart"], out["after_restart"]
        out["after_over_before_p50"] = _ratio(a["p50_ms"], b["p50_ms"])
        out["all_hits_after_restart"] = a["store_hits"] == len(images) and a["encoder_runs"] == 0
    return out


def _open_tasks(api: httpx.Client, backend: str, task_ids: list[int]) -> dict:
    """``GET /api/tasks/{id}`` for each (fresh) task: what the labeling UI asks when a task opens; Label
    Studio then calls the backend's ``/health``, ``/setup`` and a context-less ``/predict`` and answers
    only after them. Per open: Label Studio's wall time and the backend's own time per route."""
    ls_s, predict_s, backend_s, per_route = [], [], [], []
    for tid in task_ids:
        before = parse_metrics(httpx.get(f"{backend}/metrics", timeout=30).text)
        t = time.perf_counter()
        r = api.get(f"/api/tasks/{tid}")
        ls_s.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
        routes = route_seconds(before, parse_metrics(httpx.get(f"{backend}/metrics", timeout=30).text))
        routes.pop("GET /metrics", None)  # our own snapshot
        assert routes.get("POST /predict", {}).get("requests"), (
            f"task {tid}: Label Studio did not call /predict"
        )
        per_route.append(routes)
        predict_s.append(routes["POST /predict"]["seconds"])
        backend_s.append(sum(v["seconds"] for v in routes.values()))
    return {
        "tasks": len(task_ids),
        "backend_predict_s": [round(s, 3) for s in predict_s],
        "backend_all_routes_s": [round(s, 3) for s in backend_s],
        "backend_predict_max_s": round(max(predict_s), 3),
        "label_studio_get_task": stats_ms(ls_s),
        "per_open_routes": per_route,
        "target_backend_le_1s": max(backend_s) <= 1.0,
    }


def task_open_mode(args: argparse.Namespace, onnx_dir: Path) -> dict:
    """Task-open latency through a real Label Studio 1.23.2 (tests/e2e_labelstudio/ls_server.py) with the
    backend's default pre-annotation (``from-prompts``) and with ``preannotate=automatic`` (extra
    param): one project each, ``--task-open-tasks`` images imported, then the backend registered."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.e2e_labelstudio import ls_server

    try:
        ls_server.ensure_venv()
    except ls_server.Unavailable as exc:
        return {"unavailable": str(exc)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        images = make_images(root / "images", args.task_open_tasks)
        out: dict = {"label_studio": ls_server.LS_VERSION}
        t0 = time.perf_counter()
        with ls_server.label_studio(root) as ls, ls.client() as api:
            out["label_studio_start_s"] = round(time.perf_counter() - t0, 1)
            proc, base = start_backend(
                onnx_dir, ls.url, 4, args.threads, LABEL_STUDIO_API_KEY=ls.token, **model_env(args)
            )
            try:
                wait_healthy(proc, base)
                for mode in ("from-prompts", "automatic"):
                    title = f"open {mode}"
                    pid = api.post("/api/projects", json={"title": title, "label_config": CONFIG}).json()[
                        "id"
                    ]
                    for name, _, _ in images:
                        with open(root / "images" / name, "rb") as f:
                            r = api.post(
                                f"/api/projects/{pid}/import", files={"file": (name, f, "image/jpeg")}
                            )
                        assert r.status_code == 201, r.text
                    ml = {"url": base, "project": pid, "title": "edgesam", "is_interactive": True}
                    if mode != "from-prompts":  # from-prompts is the backend's default
                        ml["extra_params"] = {"preannotate": mode}
                    r = api.post("/api/ml", json=ml)
                    assert r.status_code == 201 and r.json()["state"] == "CO", r.text
                    tasks = api.get("/api/tasks", params={"project": pid}).json()["tasks"]
                    out[mode] = _open_tasks(api, base, sorted(t["id"] for t in tasks))
                    out[mode]["predictions_stored_at_open"] = len(
                        api.get("/api/predictions", params={"project": pid}).json()
                    )
            finally:
                stop_backend(proc)
    return out
