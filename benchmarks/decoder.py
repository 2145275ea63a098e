"""Decoder benchmark: the plain export vs the reassociated (fast) export, one JSON object.

Both graphs are exported from the same checkpoint (default: the random reference weights) and run on
onnxruntime fp32 with the runtime's session options (``--threads`` intra-op threads). For each batch
B (default 1, 16, 64; one positive point + the padding point per prompt, no mask input) the two are
run interleaved ``--repeats`` times and the median per-prompt cost is reported, with:

* ``max_abs_diff``: fast vs plain outputs on the same feed (logits, IoU);
* ``peak_rss_mb``: each variant's peak resident memory at the largest B, measured in a child process
  (one session, one warm-up and one timed call);
* ``floor_ms_per_prompt``: the graph's matrix-product FLOPs per prompt (counted with torch's
  ``FlopCounterMode`` on the PyTorch wrappers; the per-call image-side work is shared over B) over the
  SGEMM rate onnxruntime's MatMul reaches in the same run (2048³, same threads).

``--device`` picks the execution providers (the model resolver's device option); ``--precision fp16``
times float16 copies of both graphs (``edgesam export --fp16``'s converter) instead of fp32.

Usage: python benchmarks/decoder.py [--checkpoint PTH] [--threads 2] [--repeats 3] [--batches 1 16 64]
    [--device cpu] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import add_model_arguments

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = ROOT.parent / "shared" / "reference" / "edgesam" / "weights_perturbed.pth"
VARIANTS = ("plain", "fast")


def feed(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    """B one-point prompts (positive point + padding) on a random embedding; no mask input."""
    rng = np.random.default_rng(seed)
    return {
        "image_embeddings": rng.normal(0, 1, (1, 256, 64, 64)).astype(np.float32),
        "point_coords": np.concatenate([rng.uniform(0, 1024, (b, 1, 2)), np.zeros((b, 1, 2))], axis=1).astype(
            np.float32
        ),
        "point_labels": np.tile(np.array([1.0, -1.0], np.float32), (b, 1)),
        "mask_input": np.zeros((b, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(b, np.float32),
    }


def session(path: Path, threads: int, device: str = "cpu"):
    """A decoder session with the runtime's options on ``device``'s providers."""
    import onnxruntime as ort

    from edgesam_backend.runtime.predictor import session_options
    from edgesam_backend.runtime.providers import resolve_providers

    names, options = resolve_providers(device).ort_arguments()
    return ort.InferenceSession(
        str(path), session_options(threads), providers=names, provider_options=options
    )


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """onnxruntime MatMul rate (GFLOP/s) on an n×n×n fp32 product."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
    s.run(None, {"a": a, "b": a})
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        s.run(None, {"a": a, "b": a})
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(ts)) / 1e9


def flops(model, fast: bool) -> tuple[float, float]:
    """Matrix-product FLOPs ``(per prompt, per call)`` of a decoder wrapper (B = 1 vs B = 9)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgesam_backend.export.onnx import DecoderOnnxModel
    from edgesam_backend.model.fast_decoder import FastDecoderOnnxModel

    w = FastDecoderOnnxModel(model.prompt_encoder, model.mask_decoder) if fast else DecoderOnnxModel(model)
    counts = []
    for b in (1, 9):
        f = {k: torch.from_numpy(v) for k, v in feed(b).items()}
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            w.eval()(**f)
        counts.append(fc.get_total_flops())
    per_prompt = (counts[1] - counts[0]) / 8
    return per_prompt, counts[0] - per_prompt


def child_rss(path: Path, b: int, threads: int, device: str = "cpu") -> None:
    """Child-process mode: one warm-up and one call at batch b, print peak RSS in MB.

    Read from ``VmHWM`` (this process's own memory map): ``ru_maxrss`` would carry the forking
    parent's high-water mark across ``fork``/``exec``.
    """
    s = session(path, threads, device)
    f = feed(b)
    s.run(None, f)
    s.run(None, f)
    status = Path("/proc/self/status").read_text()
    hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
    print(int(hwm) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CKPT)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--rss-child", nargs=2, metavar=("ONNX", "B"), help=argparse.SUPPRESS)
    add_model_arguments(ap, precisions=("fp32", "fp16"))
    args = ap.parse_args()
    if args.rss_child:
        child_rss(Path(args.rss_child[0]), int(args.rss_child[1]), args.threads, args.device)
        return
    t_start = time.perf_counter()

    import onnxruntime

    from edgesam_backend.export.onnx import export_decoder
    from edgesam_backend.model.checkpoint import load_edge_sam

    model = load_edge_sam(args.checkpoint)
    tmp = Path(tempfile.mkdtemp(prefix="edgesam-decoder-bench-"))
    paths = {v: tmp / f"decoder_{v}.onnx" for v in VARIANTS}
    for v, p in paths.items():
        export_decoder(model, p, fast=(v == "fast"))
        if args.precision == "fp16":
            from edgesam_backend.export.fp16 import convert_fp16

            convert_fp16(p, p)
    sessions = {v: session(p, args.threads, args.device) for v, p in paths.items()}
    gflops = sgemm_gflops(args.threads)
    fl = {v: flops(model, v == "fast") for v in VARIANTS}

    per_batch = {}
    for b in args.batches:
        f = feed(b, seed=b)
        outs = {v: s.run(None, f) for v, s in sessions.items()}  # warm-up + agreement
        diff = max(
            float(np.abs(x - y).max()) for x, y in zip(outs["plain"][:2], outs["fast"][:2], strict=True)
        )
        ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for v, s in sessions.items():
                t = time.perf_counter()
                s.run(None, f)
                ms[v].append((time.perf_counter() - t) * 1000 / b)
        med = {v: float(np.median(x)) for v, x in ms.items()}
        per_batch[str(b)] = {
            "ms_per_prompt": {v: round(med[v], 2) for v in VARIANTS},
            "ms_per_prompt_min_max": {v: [round(min(ms[v]), 2), round(max(ms[v]), 2)] for v in VARIANTS},
            "speedup": round(med["plain"] / med["fast"], 2),
            "floor_ms_per_prompt": {
                v: round((fl[v][0] + fl[v][1] / b) / (gflops * 1e9) * 1000, 2) for v in VARIANTS
            },
            "max_abs_diff": diff,
        }

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    rss = {
        v: round(
            float(
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--device",
                        args.device,
                        "--rss-child",
                        str(p),
                        str(max(args.batches)),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                ).stdout.strip()
            ),
            1,
        )
        for v, p in paths.items()
    }
    out = {
        "benchmark": "decoder",
        "weights": args.checkpoint.name,
        "prompt": "1 positive point + padding point (T = 7 tokens), no mask input",
        "threads": args.threads,
        "device": args.device,
        "providers": sessions["fast"].get_providers(),
        "precision": args.precision,
        "repeats": args.repeats,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "sgemm_gflops": round(gflops, 1),
        "gflop_per_prompt": {v: round(fl[v][0] / 1e9, 3) for v in VARIANTS},
        "gflop_per_call": {v: round(fl[v][1] / 1e9, 3) for v in VARIANTS},
        "batches": per_batch,
        f"peak_rss_mb_at_b{max(args.batches)}": rss,
        "versions": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
        "cpu": platform.processor() or platform.machine(),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
