"""The one training-loop scaffolding shared by ``distill phase1|phase2``, ``train-rpn`` and ``finetune``.

What lives here (and nowhere else in ``training/``):

* the process set-up: :func:`setup_distributed` (torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``;
  NCCL on CUDA, Gloo on CPU; the ``device`` option checked by :func:`check_device`), :func:`num_threads`,
  :func:`wrap_ddp`;
* mixed precision: :func:`autocast` (``fp32`` / ``bf16`` / ``fp16``; a grad scaler for fp16 on CUDA);
* the run's start and end: :func:`start_run` (join the job, seed, create ``output_dir``) and
  :func:`finish_run` (rank 0 saves the final weights atomically and writes ``metrics.json``; all
  ranks wait);
* :func:`run_loop`: per step set the LR of every param group (``schedule(step) * group["lr_scale"]``,
  scale 1 when absent), run the caller's ``step_fn``, backward, clip the global grad norm, step;
  append one record per step to ``log.jsonl``; validate every ``val_every`` steps; write ``last.pth``
  atomically every ``checkpoint_every`` steps, at epoch ends and at the end; resume from ``last.pth``
  at its step (model, optimiser, scaler). Steps count from 0; step ``t`` uses ``schedule(t)``.

The caller owns the model, the data order (``batches(start)`` yields the batches from step ``start``
on, so a resumed run sees what an uninterrupted one would), the loss and the final outputs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from ..fileio import atomic_open, atomic_write_text
from ..model.checkpoint import CheckpointError

Log = Callable[[str], Any]
#: ``step_fn(batch, step) -> (loss or None to skip the update, extra log fields)``.
StepFn = Callable[[Any, int], tuple[torch.Tensor | None, dict[str, Any]]]

LAST_NAME = "last.pth"


@dataclass
class DistEnv:
    """This process's place in the job and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()


def check_device(device: str | None) -> str | None:
    """A trainer's ``device`` option, lower-cased: None / ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
    (what the configs' validators and :func:`setup_distributed` accept); else a ValueError naming them."""
    if device is None:
        return None
    name = device.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError(f"device {device!r}: training runs on cpu, cuda, cuda:N or auto")
    return name


def setup_distributed(device: str | None = None) -> DistEnv:
    """Read torchrun's environment; with more than one process, join the process group (NCCL on
    CUDA, Gloo on CPU). ``device=None`` / ``"auto"`` picks ``cuda:LOCAL_RANK`` when CUDA exists, else
    the CPU; ``cuda`` takes ``cuda:LOCAL_RANK``. A CUDA device this torch cannot see is a ValueError."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = check_device(device)
    if device is None or device == "auto":
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
        count = torch.cuda.device_count() if dev.type == "cuda" and torch.cuda.is_available() else 0
        if dev.type == "cuda" and (dev.index or 0) >= count:
            raise ValueError(
                f"device {device!r} (process {local}: {dev}): this torch sees {count} CUDA GPU(s)"
                + ("" if count else " (a CPU-only build or no driver); use device: cpu")
            )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, dev)


def wrap_ddp(module: nn.Module, env: DistEnv, find_unused: bool = False) -> nn.Module:
    """``module`` under DistributedDataParallel when the job has several processes, else itself."""
    if not env.distributed:
        return module
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[env.device.index] if env.device.type == "cuda" else None,
        find_unused_parameters=find_unused,
    )


def unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (restored afterwards); ``None`` leaves them alone."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` ``fp32`` (off), ``bf16`` or ``fp16`` on ``device``'s type."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file renamed into place (no half-written checkpoints)."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def shuffled_batches(
    n: int, batch: int, seed: int, start: int, rank: int = 0, world: int = 1
) -> Iterator[list[int]]:
    """The trainers' batch sampler: indices into a dataset of ``n`` items, step ``start`` onwards.

    Each step takes ``batch * world`` items of a permutation drawn per epoch from ``(seed, epoch)``
    (the last partial step of an epoch is dropped; a dataset smaller than a step is repeated), and
    rank ``r`` gets ``r::world`` of them, so every rank sees ``batch``. Deterministic and resumable at
    any step without saved state."""
    per_step = batch * world
    per_epoch = max(1, n // per_step)
    step = start
    while True:
        epoch, offset = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        chunk = np.resize(perm, per_step * per_epoch)[offset * per_step : (offset + 1) * per_step]
        yield [int(j) for j in chunk[rank::world]]
        step += 1


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Per-step RNG for prompt sampling: reproducible and resumable without saved state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def start_run(device: str | None, seed: int, output_dir: Path, log: Log) -> tuple[DistEnv, Path, Log]:
    """Join the job (:func:`setup_distributed`), seed torch with ``seed + rank``, create
    ``output_dir`` on rank 0 (all ranks wait for it); returns the env, the output folder and a
    logger that prints on rank 0 only."""
    env = setup_distributed(device)
    torch.manual_seed(seed + env.rank)
    out = Path(output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    env.barrier()
    say: Log = log if env.is_main else (lambda _m: None)
    return env, out, say


def finish_run(
    env: DistEnv,
    model: nn.Module,
    path: Path,
    metrics: dict[str, Any],
    package: Callable[[dict[str, torch.Tensor]], Any] | None = None,
) -> dict[str, Any]:
    """End of a run: on rank 0, save ``model``'s state_dict (detached, on the CPU; passed through
    ``package`` first when given, e.g. to check its layout or add metadata) atomically to ``path``,
    record ``metrics["final"] = str(path)`` and write ``metrics`` to ``metrics.json`` beside it; then
    every rank waits at the barrier. Returns ``metrics``."""
    if env.is_main:
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        atomic_save(package(sd) if package is not None else sd, path)
        metrics["final"] = str(path)
        atomic_write_text(Path(path).parent / "metrics.json", json.dumps(metrics, indent=2))
    env.barrier()
    return metrics


@dataclass
class LoopSettings:
    """How :func:`run_loop` runs; ``tag`` goes into ``last.pth`` and must match on resume."""

    output_dir: Path
    max_steps: int
    precision: str = "fp32"
    clip_grad: float | None = None
    checkpoint_every: int = 0
    epoch_steps: int = 0
    log_every: int = 0
    val_every: int = 0
    resume: bool = True
    name: str = "train"
    tag: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopResult:
    """What a run did: its first and last step, per-step losses of this run, validation records."""

    start: int
    step: int
    losses: list[float]
    records: list[dict[str, Any]]
    validations: list[dict[str, Any]]
    seconds: float

    def loss_summary(self, parts: int = 5) -> dict[str, float]:
        """Mean loss of the first and the last ``1/parts`` of this run's steps (empty if none)."""
        if not self.losses:
            return {}
        k = max(1, len(self.losses) // parts)
        return {
            "loss_first": float(sum(self.losses[:k]) / k),
            "loss_last": float(sum(self.losses[-k:]) / k),
        }


def run_loop(
    *,
    settings: LoopSettings,
    env: DistEnv,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
    batches: Callable[[int], Iterable[Any]],
    step_fn: StepFn,
    validate: Callable[[int], dict[str, Any]] | None = None,
    log: Log = print,
) -> LoopResult:
    """Train ``model`` (its state is what ``last.pth`` holds) from the resume step to ``max_steps``."""
    s = settings
    out = Path(s.output_dir)
    say: Log = log if env.is_main else (lambda _m: None)
    use_scaler = s.precision == "fp16" and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    last = out / LAST_NAME
    start = 0
    if s.resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        for key, want in s.tag.items():
            if state.get(key) != want:
                raise CheckpointError(
                    f"{last} is a {key}-{state.get(key)} checkpoint, this is {key} {want}; "
                    "use another output_dir or delete it"
                )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        if state.get("world_size", env.world) != env.world:
            say(f"warning: resuming with {env.world} processes, the checkpoint had {state['world_size']}")
        say(f"resumed from {last} at step {start}")

    def save_last(step: int) -> None:
        if env.is_main:
            atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "step": step,
                    "world_size": env.world,
                    "config": s.config,
                    **s.tag,
                },
                last,
            )
        env.barrier()

    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    log_file = open(out / "log.jsonl", "a") if env.is_main else None
    losses: list[float] = []
    records: list[dict[str, Any]] = []
    validations: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    step = start
    saved = -1
    try:
        for batch in batches(start) if start < s.max_steps else ():
            if step >= s.max_steps:
                break
            lr = schedule(step)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            loss, info = step_fn(batch, step)
            optimizer.zero_grad(set_to_none=True)
            grad_norm = math.nan
            if loss is not None:
                scaler.scale(loss).backward()
                if s.clip_grad:
                    scaler.unscale_(optimizer)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, s.clip_grad))
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            step += 1
            if loss is not None:
                rec = {"step": step, "lr": lr, "loss": round(losses[-1], 6), "grad_norm": round(grad_norm, 6)}
                rec.update(info)
                records.append(rec)
                if log_file is not None:
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                if s.log_every and step % s.log_every == 0:
                    say(
                        f"{s.name} step {step}/{s.max_steps} loss {losses[-1]:.4f} lr {lr:.3e} "
                        f"({time.perf_counter() - t0:.0f}s)"
                    )
            if validate is not None and s.val_every and step % s.val_every == 0:
                val = {"step": step, **validate(step)}
                validations.append(val)
                say(json.dumps(val))
                if log_file is not None:
                    log_file.write(json.dumps({"validation": val}) + "\n")
                    log_file.flush()
            at_epoch_end = bool(s.epoch_steps) and step % s.epoch_steps == 0
            if (s.checkpoint_every and step % s.checkpoint_every == 0) or at_epoch_end:
                save_last(step)
                saved = step
        if saved != step:
            save_last(step)
    finally:
        if log_file is not None:
            log_file.close()
    return LoopResult(start, step, losses, records, validations, time.perf_counter() - t0)
