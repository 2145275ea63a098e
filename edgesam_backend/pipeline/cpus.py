"""The Ray executor's CPU budget (a leaf: the config checks and the executor both ask it).

Ray Data's read tasks need CPUs too; actors that reserve every CPU of the cluster starve them and the
run waits forever (ray-project/ray#44687). :func:`cpu_budget` refuses such configurations and picks
``cpus_per_worker`` (fractional) when it is not given.
"""

from __future__ import annotations

import math
from typing import Any

from .base import PipelineError

#: CPUs reserved by each read task (so several run beside the actors).
READ_TASK_CPUS = 0.25
#: CPUs left free for Ray Data's read tasks and the driver's work.
RESERVED_CPUS = 1.0


def cpu_budget(num_workers: int, cpus_per_worker: float | None, cluster_cpus: float) -> float:
    """The CPUs each actor reserves; raises :class:`PipelineError` when the actors would take every CPU."""
    free = cluster_cpus - RESERVED_CPUS
    if free <= 0:
        raise PipelineError(
            f"executor (ray): the Ray cluster has {cluster_cpus:g} CPU(s); at least "
            f"{RESERVED_CPUS + 0.5:g} are needed ({RESERVED_CPUS:g} stays free for Ray Data's read tasks, "
            "the rest holds the model actors)"
        )
    if cpus_per_worker is None:
        cpus_per_worker = free / num_workers
    total = num_workers * cpus_per_worker
    if total > free + 1e-9:
        limit = math.floor(free / num_workers * 100) / 100
        raise PipelineError(
            f"executor (ray): num_workers x cpus_per_worker = {num_workers} x {cpus_per_worker:g} = "
            f"{total:g} CPUs, but the Ray cluster has {cluster_cpus:g}: actors reserving every CPU "
            "starve Ray Data's read tasks and the run hangs (ray-project/ray#44687). "
            f"Leave {RESERVED_CPUS:g} CPU free: set cpus_per_worker <= {limit:g} (fractions are fine) "
            "or use fewer workers"
        )
    return cpus_per_worker


def pool_size(cfg: Any) -> tuple[int, int]:
    """``(min, max)`` actors of the executor config (equal for a fixed pool of ``num_workers``)."""
    lo, hi = getattr(cfg, "min_workers", None), getattr(cfg, "max_workers", None)
    if lo is not None and hi is not None:
        return int(lo), int(hi)
    return int(cfg.num_workers), int(cfg.num_workers)


__all__ = ["READ_TASK_CPUS", "RESERVED_CPUS", "cpu_budget", "pool_size"]
