"""Pipeline throughput: images/s for grid (everything mode) vs box prompts, local vs Ray (images/s vs
the number of Ray workers), local disk vs ``s3://``, peak RSS.

    python benchmarks/pipeline.py [--onnx-dir DIR] [--images ../shared/images] [--out result.json]
        [--executors local:1,ray:1,ray:2] [--storage local,s3] [--device cpu] [--precision auto]

``--storage s3`` repeats every grid run with the images read from and the store/exports written to an
S3-compatible server (moto's, started on a loopback port by the benchmark; needs ``moto[server]`` and
s3fs): ``s3_overhead`` is the ratio of local-disk to s3 images/s per configuration. ``ray_scaling``
is images/s with N Ray workers over images/s with 1 (linear = N; it is only meaningful when the
machine has at least N + 1 free cores: on 2 cores only 1-2 workers can be measured).

Each configuration runs ``edgesam run`` in a fresh process (cold store, so every image is processed) and
reports:

* ``images_per_s``: images / processing time as the runner measures it (reading, decoding, encoding,
  prompting, decoding masks, refining, storing; without start-up, model resolution and exports);
* ``wall_s`` / ``wall_images_per_s``: the whole command, start-up (and Ray's start) included;
* ``load_avg_1m``: the machine's 1-minute load average before and after (other work on a shared machine
  skews the timings);
* ``peak_rss_mb``: the peak of the summed RSS of the process tree (the driver plus, for Ray, its GCS,
  raylet and worker processes; shared pages are counted once per process), sampled every 0.1 s;
  ``peak_rss_driver_mb``: the driver's own high-water mark (VmHWM).

Modes: ``grid`` = ``prompt.grid`` with ``--grid-points`` per side (32 → 1024 prompts per image,
SAM's default) and SAM's default filters; ``boxes`` = ``source.coco`` with ``--boxes-per-image`` boxes
per image (a regular layout) through ``prompt.source_boxes``. Without ``--onnx-dir`` the reference
weights in ../shared are exported to a temporary directory (needs torch). With those random weights the
stability filter drops almost every grid mask at low resolution, so grid timings are decoder-bound (real
weights keep more masks and spend more time upscaling and encoding RLEs).

``--device`` / ``--precision`` become the pipeline's ``model.device`` / ``model.precision`` (fp16 pairs
are converted next to the ONNX files when asked for; on a GPU each Ray actor reserves ``1 / workers``
of one, since Ray hides GPUs from actors that reserve none); each run reports what it resolved to.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import add_model_arguments, emit_result, ensure_precision_files

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXTS = (".jpg", ".jpeg", ".png")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d))
    return tree


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler(threading.Thread):
    """Peak summed RSS of a process and all its descendants, and the root's VmHWM."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_tree_kb = self.peak_root_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tree = _children()
            todo, total = [self.pid], 0
            while todo:
                p = todo.pop()
                total += _status_kb(p, "VmRSS")
                todo.extend(tree.get(p, []))
            self.peak_tree_kb = max(self.peak_tree_kb, total)
            self.peak_root_kb = max(self.peak_root_kb, _status_kb(self.pid, "VmHWM"))
            self.done.wait(self.interval)


def list_images(root: Path, limit: int | None) -> list[Path]:
    files = sorted((p for p in root.iterdir() if p.suffix.lower() in EXTS), key=lambda p: p.name)
    return files[:limit] if limit else files


def write_coco(path: Path, images: list[Path], per_image: int) -> None:
    from PIL import Image

    doc = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    side = max(1, int(per_image**0.5 + 0.999))
    for i, p in enumerate(images):
        with Image.open(p) as im:
            w, h = im.size
        doc["images"].append({"id": i + 1, "file_name": p.name, "width": w, "height": h})
        for k in range(per_image):
            r, c = divmod(k, side)
            bw, bh = w / side, h / side
            box = [c * bw + bw * 0.1, r * bh + bh * 0.1, bw * 0.8, bh * 0.8]
            doc["annotations"].append(
                {"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": 1, "bbox": box}
            )
    path.write_text(json.dumps(doc))


def _has_gpu_provider() -> bool:
    """The installed onnxruntime has the CUDA provider (``auto`` then runs on the GPU)."""
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def pipeline_yaml(
    mode: str,
    executor: str,
    workers: int,
    onnx: Path,
    src: Path | str,
    args: argparse.Namespace,
    out: str = "out",
) -> str:
    on_gpu = args.device.split(":")[0] in ("cuda", "tensorrt", "auto")
    if executor == "ray":
        gpus = f", gpus_per_worker: {1 / workers:.4g}" if on_gpu and _has_gpu_provider() else ""
        ex = f"{{type: ray, num_workers: {workers}, num_cpus: {args.ray_cpus}{gpus}}}"
    else:
        ex = f"{{type: local, workers: {workers}}}"
    if mode == "grid":
        source = f"  - kind: source.folder\n    path: {src}\n"
        prompt = f"  - kind: prompt.grid\n    points_per_side: {args.grid_points}\n"
    else:
        source = f"  - kind: source.coco\n    annotations: {src}\n    images_dir: {args.images}\n"
        prompt = "  - kind: prompt.source_boxes\n"
    return (
        f"model:\n  onnx_dir: {onnx}\n  device: {args.device}\n  precision: {args.precision}\n"
        f"executor: {ex}\noutput_dir: {out}\nmax_errors: 0\nsteps:\n"
        + source
        + prompt
        + f"  - kind: segment\n    points_per_batch: {args.points_per_batch}\n"
        + "  - kind: refine\n  - kind: export.coco\n"
    )


class S3Server:
    """A moto S3 server on 127.0.0.1 with bucket ``bench``; ``env`` points the standard AWS chain at it."""

    def __init__(self) -> None:
        import socket

        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        }
        os.environ.update(self.env)
        self.client = boto3.client("s3")
        self.client.create_bucket(Bucket="bench")

    def upload(self, images: list[Path], prefix: str) -> str:
        for p in images:
            self.client.upload_file(str(p), "bench", f"{prefix}/{p.name}")
        return f"s3://bench/{prefix}"


def run_one(
    mode: str,
    executor: str,
    workers: int,
    onnx: Path,
    args: argparse.Namespace,
    tmp: Path,
    s3: S3Server | None = None,
) -> dict:
    work = tmp / f"{mode}-{executor}-{workers}{'-s3' if s3 else ''}"
    work.mkdir()
    out_dir = "out"
    if s3 is not None:
        imgs = list_images(args.images, args.grid_images)
        src: Path | str = s3.upload(imgs, f"{work.name}/images")
        out_dir = f"s3://bench/{work.name}/out"
    elif mode == "grid":
        imgs = list_images(args.images, args.grid_images)
        src = work / "images"
        src.mkdir()
        for p in imgs:
            os.symlink(p, src / p.name)
    else:
        imgs = list_images(args.images, args.box_images)
        src = work / "coco.json"
        write_coco(src, imgs, args.boxes_per_image)
    cfg = work / "pipeline.yaml"
    cfg.write_text(pipeline_yaml(mode, executor, workers, onnx, src, args, out_dir))
    cmd = [sys.executable, "-m", "edgesam_backend.cli", "run", str(cfg), "--quiet"]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=work)
    sampler = RssSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{mode}/{executor} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    summary = json.loads(out.decode().strip().splitlines()[-1])
    return {
        "mode": mode,
        "storage": "s3" if s3 is not None else "local",
        "executor": executor,
        "workers": workers,
        "images": summary["images"],
        "prompts_per_image": args.grid_points**2 if mode == "grid" else args.boxes_per_image,
        "points_per_batch": args.points_per_batch,
        "masks": summary["masks"],
        "images_per_s": summary["images_per_s"],
        "device": summary.get("device"),
        "providers": summary.get("providers"),
        "precision": summary.get("precision"),
        "wall_s": round(wall, 2),
        "wall_images_per_s": round(summary["images"] / wall, 4),
        "peak_rss_mb": round(sampler.peak_tree_kb / 1024, 1),
        "peak_rss_driver_mb": round(sampler.peak_root_kb / 1024, 1),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def _ray_scaling(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Per mode (local storage): Ray images/s with N workers divided by images/s with 1."""
    out: dict[str, dict[str, float]] = {}
    for mode in {r["mode"] for r in runs}:
        ray = {r["workers"]: r["images_per_s"] for r in runs if r["mode"] == mode and r["executor"] == "ray"
               and r["storage"] == "local"}  # fmt: skip
        if 1 in ray and ray[1] > 0:
            out[mode] = {str(n): round(v / ray[1], 3) for n, v in sorted(ray.items())}
    return out


def _s3_overhead(runs: list[dict]) -> list[dict]:
    """Local-disk images/s over s3 images/s for each configuration measured both ways."""
    local = {(r["mode"], r["executor"], r["workers"]): r for r in runs if r["storage"] == "local"}
    out = []
    for r in runs:
        ref = local.get((r["mode"], r["executor"], r["workers"]))
        if r["storage"] == "s3" and ref and r["images_per_s"] > 0:
            out.append(
                {
                    "mode": r["mode"],
                    "executor": f"{r['executor']}:{r['workers']}",
                    "local_images_per_s": ref["images_per_s"],
                    "s3_images_per_s": r["images_per_s"],
                    "slowdown": round(ref["images_per_s"] / r["images_per_s"], 3),
                    "wall_s": [ref["wall_s"], r["wall_s"]],
                }
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--onnx-dir", type=Path, help="encoder.onnx + decoder.onnx (default: export the reference)"
    )
    ap.add_argument("--images", type=Path, default=SHARED / "images")
    ap.add_argument("--grid-points", type=int, default=32)
    ap.add_argument("--grid-images", type=int, default=2, help="images for grid mode (it is slow on a CPU)")
    ap.add_argument("--box-images", type=int, default=0, help="images for box mode (0: all)")
    ap.add_argument("--boxes-per-image", type=int, default=10)
    ap.add_argument("--points-per-batch", type=int, default=64, help="prompts per decoder call")
    ap.add_argument("--modes", default="grid,boxes")
    ap.add_argument("--executors", default="local:1,ray:1,ray:2", help="executor:workers, comma separated")
    ap.add_argument("--storage", default="local", help="local and/or s3 (grid mode), comma separated")
    ap.add_argument("--ray-cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    add_model_arguments(ap)
    args = ap.parse_args()
    args.images = args.images.resolve()

    with tempfile.TemporaryDirectory(prefix="edgesam-bench-") as td:
        tmp = Path(td)
        onnx = args.onnx_dir
        if onnx is None:
            from edgesam_backend.export.onnx import export_onnx

            onnx = tmp / "onnx"
            export_onnx(SHARED / "reference" / "edgesam" / "weights_perturbed.pth", onnx)
        ensure_precision_files(onnx, args.precision)
        runs = []
        storages = args.storage.split(",")
        s3 = S3Server() if "s3" in storages else None
        for mode in args.modes.split(","):
            for spec in args.executors.split(","):
                ex, _, n = spec.partition(":")
                for where in storages:
                    if where == "s3" and mode != "grid":
                        continue
                    r = run_one(
                        mode, ex, int(n or 1), onnx.resolve(), args, tmp, s3 if where == "s3" else None
                    )
                    print(json.dumps(r), file=sys.stderr)
                    runs.append(r)
        if s3 is not None:
            s3.server.stop()
    import onnxruntime

    result = {
        "benchmark": "pipeline",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "weights": "reference (random) weights" if args.onnx_dir is None else str(args.onnx_dir),
        "images_dir": str(args.images),
        "runs": runs,
        "ray_scaling": _ray_scaling(runs),
        "s3_overhead": _s3_overhead(runs),
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
