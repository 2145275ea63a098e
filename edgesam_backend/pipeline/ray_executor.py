"""The Ray executor (``executor: {type: ray}``, needs the ``[ray]`` extra): Ray Data streaming.

::

    from_items(items)                       driver: item JSON + prompt fingerprint per row
      .map(read_row, num_cpus=0.25)         read tasks: file bytes, sha256, result key; stored → skipped
      .map(SegmentActor,                    actor pool (fixed N, or autoscaling (min, max)): each actor
           concurrency=N | (min, max),      loads one model once (ONNX sessions) and then decodes,
           num_cpus=cpus_per_worker,        encodes, segments, refines and writes the result file of
           num_gpus=gpus_per_worker)        every row it gets
      .iter_rows()                          driver: progress, failures, max_errors, node / GPU ids

Actors write the per-image results themselves (in parallel) into the same store as the local executor,
so resume works across executors and the exports (built by the driver from the store, in source order)
are identical. On a cluster of several machines the output must be visible to every node: an object
store URL (``s3://...``: workers read images and write results directly, see :mod:`.storage`) or a
shared file system; the package (and the model files, at the same path) must be there too.

Fault tolerance is Ray Data's: actors are restarted (``max_restarts=-1``) and their rows retried when a
node dies, and a retried row rewrites the same result key with the same bytes, so no image is lost or
duplicated. Every output row names the node and actor that processed it (``summary["nodes"]``) and
the GPUs Ray gave that actor (``summary["workers"][actor]["gpus"]``, with ``gpus_per_worker``).

CPU starvation (actors reserving every CPU starve the read tasks): see :mod:`.cpus`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from .base import PipelineError
from .cpus import READ_TASK_CPUS, cpu_budget, pool_size
from .records import ImageItem
from .store import ResultStore
from .worker import ImageProcessor, Outcome, models_built, read_item, short_error


def read_row(row: dict[str, Any], config_hash: str, store_dir: str) -> dict[str, Any]:
    """Read one image (a path or URL, read on the worker) and check the store (``store_dir``: a
    directory or URL)."""
    from .records import result_key

    item = ImageItem.from_dict(json.loads(row["item"]))
    out = {
        "index": int(row["index"]),
        "item": row["item"],
        "data": b"",
        "sha": "",
        "key": "",
        "status": "todo",
        "error": "",
    }
    try:
        data, sha = read_item(item)
    except Exception as exc:
        out.update(status="failed", error=short_error(exc))
        return out
    key = result_key(sha, config_hash, row["fp"])
    out.update(sha=sha, key=key)
    if ResultStore(store_dir).has(key):
        out["status"] = "skipped"
    else:
        out["data"] = data
    return out


class SegmentActor:
    """One model per actor (loaded once, in ``__init__``); processes ``todo`` rows and writes their
    results. Rows it returns carry its node id, actor id, the process's model-load count and the GPU
    ids Ray assigned to it (comma-separated; empty without ``gpus_per_worker``)."""

    def __init__(self, plan: dict[str, Any], threads: int) -> None:
        import ray

        self.proc = ImageProcessor(plan, threads=threads)
        self.store = ResultStore(plan["output_dir"])
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.actor_id = ctx.get_actor_id() or ""
        self.gpus = ",".join(str(g) for g in ray.get_gpu_ids())

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        import time

        out = {
            "index": int(row["index"]),
            "status": row["status"],
            "key": row["key"],
            "masks": 0,
            "error": row["error"],
            "stage": "read" if row["status"] == "failed" else "",
            "seconds": 0.0,
            "node": self.node_id,
            "worker": self.actor_id,
            "model_loads": models_built(),
            "gpus": self.gpus,
        }
        if row["status"] != "todo":
            return out
        item = ImageItem.from_dict(json.loads(row["item"]))
        t0 = time.perf_counter()
        stage = "decode"
        try:
            image = self.proc.decode(bytes(row["data"]), item.file_name)
            stage = "encode"
            t = time.perf_counter()
            emb = self.proc.encode(image, row["sha"])
            enc_s = time.perf_counter() - t
            stage = "segment"
            result = self.proc.process(item, image, emb, row["sha"], row["key"], enc_s)
            stage = "store"
            self.store.write_result(result)
        except Exception as exc:
            out.update(status="failed", error=short_error(exc), stage=stage)
            return out
        out.update(status="done", masks=len(result.masks), seconds=time.perf_counter() - t0)
        return out


def _guarded(rows: Any) -> Any:
    """Ray's own failures (actors that cannot start, a lost cluster) as one clear error."""
    try:
        yield from rows
    except PipelineError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(
            f"executor (ray): Ray Data failed: {type(exc).__name__}: {first[:500]} "
            "(finished images are stored; run again to resume)"
        ) from exc


def run_ray(
    plan: dict[str, Any],
    items: list[ImageItem],
    fingerprints: list[str],
    store: ResultStore,
    on_outcome: Callable[[Outcome], bool],
    cfg: Any,
    *,
    model_threads: int | None = None,
) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise PipelineError(
            "executor (ray) needs Ray Data: pip install 'edgesam-backend[ray]' "
            "(or use executor: {type: local})"
        ) from None

    lo, hi = pool_size(cfg)
    started = False
    if not ray.is_initialized() and not cfg.address:  # a local Ray: check before paying for its start
        cpu_budget(hi, cfg.cpus_per_worker, float(cfg.num_cpus or os.cpu_count() or 1))
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "WARNING",
        }
        if cfg.address:
            kwargs["address"] = cfg.address
        elif cfg.num_cpus:
            kwargs["num_cpus"] = cfg.num_cpus
        try:
            ray.init(**kwargs)
        except Exception as exc:
            raise PipelineError(
                f"executor (ray): cannot start/connect to Ray ({cfg.address or 'local'}): {exc}"
            ) from None
        started = True
    try:
        cluster_cpus = float(ray.cluster_resources().get("CPU", 0.0))
        cpw = cpu_budget(hi, cfg.cpus_per_worker, cluster_cpus)
        gpw = float(getattr(cfg, "gpus_per_worker", 0.0) or 0.0)
        cluster_gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpw > 0 and cluster_gpus < gpw:
            raise PipelineError(
                f"executor (ray): gpus_per_worker {gpw:g} but the Ray cluster has {cluster_gpus:g} GPUs "
                "(start the nodes with GPUs, or set gpus_per_worker: 0)"
            )
        threads = model_threads or max(1, int(cpw))
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress line replaces its chatter
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        rows = [
            {"index": it.index, "item": json.dumps(it.to_dict()), "fp": fp}
            for it, fp in zip(items, fingerprints, strict=True)
        ]
        blocks = max(1, min(len(rows), hi * 4))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map(
            read_row,
            fn_kwargs={"config_hash": plan["config_hash"], "store_dir": str(plan["output_dir"])},
            num_cpus=READ_TASK_CPUS,
        )
        ds = ds.map(
            SegmentActor,
            fn_constructor_kwargs={"plan": plan, "threads": threads},
            concurrency=hi if lo == hi else (lo, hi),
            num_cpus=cpw,
            **({"num_gpus": gpw} if gpw > 0 else {}),
        )
        it = ds.iter_rows()
        try:
            for row in _guarded(it):
                out = Outcome(
                    index=int(row["index"]),
                    status=str(row["status"]),
                    key=str(row["key"]) or None,
                    masks=int(row["masks"]),
                    error=str(row["error"]),
                    stage=str(row["stage"]),
                    seconds=float(row["seconds"]),
                    node=str(row.get("node", "")),
                    worker=str(row.get("worker", "")),
                    model_loads=int(row.get("model_loads", 0)),
                    gpus=[g for g in str(row.get("gpus", "")).split(",") if g],
                )
                if not on_outcome(out):
                    break
        finally:
            del it
    finally:
        if started:
            ray.shutdown()


__all__ = ["SegmentActor", "read_row", "run_ray"]
