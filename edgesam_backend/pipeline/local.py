"""The local executor: threads in this process, stages overlapping.

::

    reader pool (2 threads)      read file + sha256 → skip if stored → decode (Pillow, EXIF)
          │  queue (prefetch)
    worker w: encoder thread     predictor.encode (onnxruntime releases the GIL)
          │  queue (1)
    worker w: mask thread        prompts → decoder batches → refine → result file (atomic)

Each worker owns one model (its own onnxruntime sessions, ``threads`` intra-op threads each); the encoder
of image i+1 runs while the masks of image i are decoded. Items are read in source order; results are
keyed, so completion order does not matter. ``on_outcome`` is called in the calling thread for every
item; when it returns False the executor stops taking new images, finishes those in flight (already
submitted to the reader pool: at most ``prefetch`` + 2 per worker) and returns; their results are stored
(a re-run skips them) and their outcomes still reach ``on_outcome``.
On Ctrl-C (``KeyboardInterrupt`` in the calling thread) it stops taking images, waits up to
:data:`INTERRUPT_GRACE_S` for those in flight and re-raises; unfinished images leave no result.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .records import ImageItem
from .store import ResultStore
from .worker import ImageProcessor, Outcome, read_item, short_error

_DONE = object()
#: Seconds Ctrl-C waits for images in flight before abandoning them (the threads are daemons).
INTERRUPT_GRACE_S = 2.0


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_local(
    plan: dict[str, Any],
    items: list[ImageItem],
    fingerprints: list[str],
    store: ResultStore,
    on_outcome: Callable[[Outcome], bool],
    *,
    workers: int = 1,
    prefetch: int = 4,
    threads: int | None = None,
    processors: list[ImageProcessor] | None = None,
) -> None:
    """Process ``items`` (see module docs); models are built here unless ``processors`` are given."""
    if processors is None:
        n_threads = threads or default_threads(workers)
        processors = [ImageProcessor(plan, threads=n_threads) for _ in range(workers)]
    workers = len(processors)
    key_of = processors[0].key
    stop = threading.Event()
    ready: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
    outcomes: queue.Queue[Any] = queue.Queue()

    def read_one(item: ImageItem, fp: str) -> tuple[str, Any]:
        t0 = time.perf_counter()
        stage = "read"
        try:
            data, sha = read_item(item)
            key = key_of(sha, fp)
            if store.has(key):
                return "skip", Outcome(item.index, "skipped", key=key)
            stage = "decode"
            image = processors[0].decode(data, item.file_name)
            return "ok", (item, image, sha, key, t0)
        except Exception as exc:
            return "fail", Outcome(item.index, "failed", error=short_error(exc), stage=stage)

    def put(q: queue.Queue[Any], obj: Any) -> None:
        q.put(obj)  # consumers keep consuming until _DONE, also after a stop

    def reader() -> None:
        try:
            with ThreadPoolExecutor(max_workers=2, thread_name_prefix="edgesam-read") as pool:
                pending: deque[Future[tuple[str, Any]]] = deque()

                def drain_one() -> None:
                    status, payload = pending.popleft().result()
                    if status == "ok":
                        put(ready, payload)
                    else:
                        outcomes.put(payload)

                for item, fp in zip(items, fingerprints, strict=True):
                    if stop.is_set():
                        break
                    pending.append(pool.submit(read_one, item, fp))
                    while len(pending) >= prefetch:
                        drain_one()
                while pending:  # in flight (submitted before a stop): finish them
                    drain_one()
        finally:
            for _ in range(workers):
                put(ready, _DONE)

    def encoder(proc: ImageProcessor, mid: queue.Queue[Any]) -> None:
        while True:
            job = ready.get()
            if job is _DONE:
                put(mid, _DONE)
                return
            item, image, sha, key, t0 = job
            t = time.perf_counter()
            try:
                emb = proc.encode(image, sha)
            except Exception as exc:
                outcomes.put(Outcome(item.index, "failed", error=short_error(exc), stage="encode"))
                continue
            put(mid, (item, image, sha, key, t0, time.perf_counter() - t, emb))

    def masker(proc: ImageProcessor, mid: queue.Queue[Any]) -> None:
        while True:
            job = mid.get()
            if job is _DONE:
                outcomes.put(_DONE)
                return
            item, image, sha, key, t0, enc_s, emb = job
            stage = "segment"
            try:
                result = proc.process(item, image, emb, sha, key, enc_s)
                stage = "store"
                store.write_result(result)
            except Exception as exc:
                outcomes.put(Outcome(item.index, "failed", error=short_error(exc), stage=stage))
                continue
            outcomes.put(
                Outcome(
                    item.index,
                    "done",
                    key=key,
                    masks=len(result.masks),
                    seconds=time.perf_counter() - t0,
                    stats=result.stats,
                )
            )

    threads_list = [threading.Thread(target=reader, name="edgesam-reader", daemon=True)]
    for w, proc in enumerate(processors):
        mid: queue.Queue[Any] = queue.Queue(maxsize=1)
        threads_list.append(
            threading.Thread(target=encoder, args=(proc, mid), name=f"edgesam-enc{w}", daemon=True)
        )
        threads_list.append(
            threading.Thread(target=masker, args=(proc, mid), name=f"edgesam-mask{w}", daemon=True)
        )
    for t in threads_list:
        t.start()
    finished = 0
    interrupted = False
    try:
        while finished < workers:
            out = outcomes.get()
            if out is _DONE:
                finished += 1
                continue
            if not on_outcome(out):
                stop.set()
    except KeyboardInterrupt:
        # Ctrl-C: take no new images, wait briefly for the ones in flight, abandon the rest (results are
        # written atomically, so an abandoned image leaves nothing behind and is redone next run)
        interrupted = True
        stop.set()
        deadline = time.monotonic() + INTERRUPT_GRACE_S
        for t in threads_list:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        while True:  # report what finished meanwhile, so the caller knows what was kept
            try:
                out = outcomes.get_nowait()
            except queue.Empty:
                break
            if out is not _DONE:
                on_outcome(out)
        raise
    finally:
        stop.set()
        if not interrupted:
            for t in threads_list:
                t.join(timeout=60)


__all__ = ["default_threads", "run_local"]
