"""EdgeSAM's two-phase distillation: ``edgesam distill phase1|phase2|cache config.yaml``.

Phase 1 (encoder-only KD): the student encoder is trained with the per-pixel MSE to the teacher's
embedding over the un-padded region (:func:`phase1_loss`). Phase 2 (prompt-in-the-loop KD): per batch
a coin picks boxes or points; up to ``max_prompts`` per image; the student (encoder + decoder, prompt
encoder frozen) and the teacher decoder (on the teacher embedding) decode the same prompts; BCE + Dice
against the teacher's binarised masks on every output token; ``decode_iters`` rounds, each after the
first adding a point sampled from the student/teacher disagreement (:func:`phase2_loss`).

One process on CPU, or ``torchrun --nproc_per_node N -m edgesam_backend.cli distill ...`` on GPUs
(DistributedDataParallel, one sampler slice per rank, rank-0 checkpoints). ``output_dir`` gets
``last.pth`` (resumable: model, optimiser, step), ``log.jsonl``, ``metrics.json`` and the final
``edge_sam_distilled.pth``: a plain state_dict in EdgeSAM's official layout (real topology) that
``load_edge_sam`` / the engine / ``edgesam export`` load.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn

from ..fileio import atomic_open, atomic_write_text
from ..model.checkpoint import CheckpointError, check_state_dict, unwrap_state_dict
from ..model.edge_sam import EdgeSam
from ..model.sam_vit import SamTeacher
from .cache import EmbeddingCache, build_cache, cache_meta
from .data import DistillDataset, EpochSampler, Item, collate
from .distill_config import Phase1Config, Phase2Config
from .losses import mask_distill_loss, masked_mse, valid_mask
from .models import build_student, build_teacher
from .prompts import sample_disagreement_points, select_by_iou, subsample_prompts
from .schedule import make_optimizer, make_schedule

FINAL_NAME = "edge_sam_distilled.pth"
Log = Callable[[str], Any]


# --- distributed environment ------------------------------------------------------------------------


@dataclass
class DistEnv:
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


def setup_distributed(device: str | None = None) -> DistEnv:
    """Read torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK``; with more than one process, join the
    process group (NCCL on CUDA, Gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, dev)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


# --- losses of one batch ----------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def phase1_loss(emb_s: torch.Tensor, emb_t: torch.Tensor, items: list[Item], image_size: int) -> torch.Tensor:
    """Masked per-pixel MSE between student and teacher embeddings (padding excluded)."""
    grid = emb_s.shape[-1]
    valid = valid_mask([it.input_hw for it in items], image_size, grid, threshold=True, device=emb_s.device)
    return masked_mse(emb_s, emb_t, valid)


@dataclass
class Phase2Stats:
    prompt: str = ""
    num_prompts: int = 0
    bce: float = 0.0
    dice: float = 0.0
    points_sampled: int = 0
    dummy_points: int = 0


def phase2_loss(
    student: EdgeSam,
    teacher: SamTeacher,
    emb_s: torch.Tensor,
    emb_t: torch.Tensor,
    items: list[Item],
    cfg: Phase2Config,
    generator: torch.Generator,
    stats: Phase2Stats | None = None,
) -> torch.Tensor | None:
    """Prompt-in-the-loop loss of one batch (``None`` if no image has an instance)."""
    stats = stats if stats is not None else Phase2Stats()
    device = emb_s.device
    s = cfg.image_size
    img_idx, boxes, points, hws = [], [], [], []
    for b, it in enumerate(items):
        sel = subsample_prompts(len(it.boxes), cfg.max_prompts, generator)
        img_idx += [b] * len(sel)
        boxes.append(it.boxes[sel])
        points.append(it.points[sel])
        hws += [it.input_hw] * len(sel)
    if not img_idx:
        return None
    use_box = bool(torch.rand((), generator=generator) < cfg.box_prob)
    c_out = cfg.multimask_output if (not use_box or cfg.multimask_on_box) else 1
    iters = cfg.decode_iters if (not use_box or cfg.iter_on_box) else 1
    n = len(img_idx)
    idx = torch.tensor(img_idx, device=device)
    es, et = emb_s[idx], emb_t[idx]
    grid = 4 * emb_s.shape[-1]
    weight = valid_mask(hws, s, grid, threshold=False, device=device)  # (N, 1, M, M), fractional
    if use_box:
        box_in: torch.Tensor | None = torch.cat(boxes).to(device)
        coords: torch.Tensor | None = None
        labels: torch.Tensor | None = None
    else:
        box_in = None
        coords = torch.cat(points).to(device)[:, None, :]
        labels = torch.ones((n, 1), dtype=torch.long, device=device)
    dense_pe = student.prompt_encoder.get_dense_pe()
    stats.prompt, stats.num_prompts = ("box" if use_box else "point"), n
    total = emb_s.new_zeros(())
    prev: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    bce_sum = dice_sum = 0.0
    for it in range(iters):
        if it > 0 and prev is not None:
            with torch.no_grad():
                m_s, m_t, iou_t = prev
                inside = weight > 0
                s_bin, t_bin = (m_s > 0) & inside, (m_t > 0) & inside
                if c_out > 1:
                    s_bin, t_bin = select_by_iou(iou_t, s_bin, t_bin)
                else:
                    s_bin, t_bin = s_bin[:, 0], t_bin[:, 0]
                new_c, new_l = sample_disagreement_points(
                    s_bin,
                    t_bin,
                    cfg.points_per_refine_iter,
                    scale=s / grid,
                    min_pixels_per_point=cfg.min_error_pixels_per_point,
                    generator=generator,
                )
                stats.points_sampled += int((new_l != -2).sum())
                stats.dummy_points += int((new_l == -2).sum())
                coords = new_c if coords is None else torch.cat([coords, new_c], dim=1)
                labels = new_l if labels is None else torch.cat([labels, new_l], dim=1)
        pts = (coords, labels) if coords is not None else None
        sparse, dense = student.prompt_encoder(points=pts, boxes=box_in, masks=None)
        m_s, _ = student.mask_decoder(es, dense_pe, sparse, dense, c_out)
        with torch.no_grad():
            t_sparse, t_dense = teacher.prompt_encoder(points=pts, boxes=box_in, masks=None)
            m_t, iou_t = teacher.mask_decoder(et, dense_pe, t_sparse, t_dense, c_out)
        loss, bce, dice = mask_distill_loss(
            m_s,
            m_t,
            weight,
            bce_weight=cfg.bce_weight,
            dice_weight=cfg.dice_weight,
            temperature=cfg.temperature,
        )
        total = total + loss / iters
        bce_sum += float(bce.detach()) / iters
        dice_sum += float(dice.detach()) / iters
        prev = (m_s.detach().float(), m_t.float(), iou_t.float())
    stats.bce, stats.dice = bce_sum, dice_sum
    return total


class _Phase2Module(nn.Module):
    """Student encoder + phase-2 loss as one ``forward`` (what DistributedDataParallel wraps). The
    teacher is held outside the module tree so DDP neither broadcasts nor syncs it."""

    def __init__(self, student: EdgeSam, teacher: SamTeacher, cfg: Phase2Config) -> None:
        super().__init__()
        self.student = student
        object.__setattr__(self, "_teacher", teacher)
        self.cfg = cfg

    def forward(
        self,
        x: torch.Tensor,
        emb_t: torch.Tensor,
        items: list[Item],
        gen: torch.Generator,
        stats: Phase2Stats,
    ) -> torch.Tensor | None:
        with _autocast(x.device, self.cfg.precision):
            emb_s = self.student.image_encoder(x)
            return phase2_loss(self.student, self._teacher, emb_s, emb_t, items, self.cfg, gen, stats)


# --- set-up helpers ---------------------------------------------------------------------------------


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    return unwrap_state_dict(obj)


def load_encoder_weights(student: EdgeSam, path: Path, strict: bool, log: Log = print) -> None:
    """Student encoder weights from an EdgeSAM state_dict / training checkpoint (``image_encoder.*``)
    or a bare RepViT one (``features.*``, e.g. ImageNet weights; ``strict=False`` skips the rest)."""
    sd = _read_state(path)
    enc = {k[len("image_encoder.") :]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    if not enc:
        enc = dict(sd)
    own = student.image_encoder.state_dict()
    fit = {k: v for k, v in enc.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    missing = [k for k in own if k not in fit]
    if strict and (missing or len(fit) != len(enc)):
        raise CheckpointError(
            f"{path}: encoder weights do not fit the student ({len(missing)} missing, "
            f"{len(enc) - len(fit)} unexpected or of another shape, e.g. {(missing or list(enc))[:3]})"
        )
    student.image_encoder.load_state_dict(fit, strict=False)
    log(f"loaded {len(fit)}/{len(own)} encoder tensors from {path}")


def _prepare_teacher_and_cache(
    cfg: Phase1Config | Phase2Config, env: DistEnv, ds: DistillDataset, log: Log
) -> tuple[SamTeacher, EmbeddingCache | None]:
    teacher = build_teacher(cfg.teacher.kind, cfg.teacher.checkpoint, cfg.image_size, cfg.teacher.seed)
    for p in teacher.parameters():
        p.requires_grad_(False)
    cache = None
    if cfg.cache is not None:
        meta = cache_meta(
            cfg.teacher.kind,
            str(cfg.teacher.checkpoint) if cfg.teacher.checkpoint else f"random-seed{cfg.teacher.seed}",
            cfg.image_size,
        )
        if env.is_main:
            EmbeddingCache(cfg.cache.dir, meta)  # writes / checks meta.json once
        env.barrier()
        cache = EmbeddingCache(cfg.cache.dir, meta)
        build_cache(
            cache,
            teacher.image_encoder,
            ds,
            shard_size=cfg.cache.shard_size,
            batch_size=cfg.cache.batch_size,
            device=env.device,
            amp=cfg.teacher.amp,
            rank=env.rank,
            world=env.world,
            num_workers=cfg.num_workers,
            log=log,
        )
        env.barrier()
        cache.reload()
        teacher.image_encoder = nn.Identity()  # embeddings come from the cache: free the ViT
    return teacher.to(env.device), cache


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


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """Per-step RNG for prompt sampling: reproducible and resumable without saved state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def build_cache_only(cfg: Phase1Config | Phase2Config, log: Log = print) -> dict[str, Any]:
    """``edgesam distill cache``: build (or complete) the teacher-embedding cache and stop."""
    if cfg.cache is None:
        raise ValueError("the config has no cache section (cache.dir)")
    env = setup_distributed(cfg.device)
    with num_threads(cfg.threads):
        ds = DistillDataset(cfg.data, cfg.image_size, seed=cfg.seed)
        _, cache = _prepare_teacher_and_cache(cfg, env, ds, log)
    assert cache is not None
    return {"cache_dir": str(cfg.cache.dir), "images": len(ds), "cached": len(cache)}


# --- the training loop ------------------------------------------------------------------------------


def distill(cfg: Phase1Config | Phase2Config, log: Log = print) -> dict[str, Any]:
    """Run (or resume) phase 1 or phase 2; returns the metrics dict (also in ``metrics.json``)."""
    with num_threads(cfg.threads):
        return _distill(cfg, log)


def _distill(cfg: Phase1Config | Phase2Config, log: Log) -> dict[str, Any]:
    phase = 2 if isinstance(cfg, Phase2Config) else 1
    env = setup_distributed(cfg.device)
    torch.manual_seed(cfg.seed + env.rank)
    out = Path(cfg.output_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    env.barrier()
    say: Log = log if env.is_main else (lambda _m: None)

    ds = DistillDataset(cfg.data, cfg.image_size, seed=cfg.seed, hflip=cfg.hflip)
    teacher, cache = _prepare_teacher_and_cache(cfg, env, ds, say)

    student = build_student(
        cfg.image_size, cfg.student.arch, cfg.student.slim_widths, cfg.student.upsample_mode
    )
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    if phase == 1:
        assert isinstance(cfg, Phase1Config)
        if cfg.init_encoder_from is not None:
            load_encoder_weights(student, cfg.init_encoder_from, strict=False, log=say)
        for p in student.parameters():
            p.requires_grad_(False)
        for p in student.image_encoder.parameters():
            p.requires_grad_(True)
    else:
        assert isinstance(cfg, Phase2Config)
        if cfg.init_from is not None:
            load_encoder_weights(student, cfg.init_from, strict=True, log=say)
            if not cfg.init_decoder_from_teacher:
                sd = _read_state(cfg.init_from)
                for name in ("prompt_encoder", "mask_decoder"):
                    part = {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")}
                    getattr(student, name).load_state_dict(part, strict=True)
        for module, frozen in (
            (student.prompt_encoder, cfg.freeze_prompt_encoder),
            (student.image_encoder, cfg.freeze_image_encoder),
            (student.mask_decoder, cfg.freeze_mask_decoder),
        ):
            for p in module.parameters():
                p.requires_grad_(not frozen)
    student.to(env.device)
    if cfg.student.sync_bn and env.distributed:
        student.image_encoder = nn.SyncBatchNorm.convert_sync_batchnorm(student.image_encoder)

    opt = make_optimizer(student, cfg.optim)
    bs = cfg.optim.batch_size
    sampler = EpochSampler(
        len(ds),
        env.world,
        env.rank,
        seed=cfg.seed,
        shuffle=cfg.shuffle,
        same_order=cfg.same_order_every_epoch,
    )
    iters_per_epoch = len(sampler.indices()) // bs
    if iters_per_epoch == 0:
        raise ValueError(
            f"{len(ds)} images are fewer than one batch of {bs} per process ({env.world} processes)"
        )
    schedule = make_schedule(cfg.optim, iters_per_epoch, env.world)
    total_iters = cfg.optim.epochs * iters_per_epoch
    stop = min(total_iters, cfg.max_steps) if cfg.max_steps else total_iters
    use_scaler = cfg.precision == "fp16" and env.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start = 0
    last = out / "last.pth"
    if cfg.resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        if state.get("phase") != phase:
            raise CheckpointError(f"{last} is a phase-{state.get('phase')} checkpoint, this is phase {phase}")
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        if state.get("world_size", env.world) != env.world:
            say(f"warning: resuming with {env.world} processes, the checkpoint had {state['world_size']}")
        say(f"resumed from {last} at step {start}")

    trainable = [p for p in student.parameters() if p.requires_grad]
    if phase == 1:
        runner: nn.Module = student.image_encoder
    else:
        assert isinstance(cfg, Phase2Config)
        runner = _Phase2Module(student, teacher, cfg)
    if env.distributed:
        runner = nn.parallel.DistributedDataParallel(
            runner,
            device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=phase == 2,
        )

    def save_last(step: int) -> None:
        if env.is_main:
            _atomic_save(
                {
                    "model": student.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "step": step,
                    "phase": phase,
                    "world_size": env.world,
                    "config": cfg.model_dump(mode="json"),
                },
                last,
            )
        env.barrier()

    log_file = open(out / "log.jsonl", "a") if env.is_main else None
    history: list[float] = []
    t0 = time.perf_counter()
    step = start
    try:
        while step < stop:
            epoch, offset = divmod(step, iters_per_epoch)
            sampler.set_epoch(epoch, skip=offset * bs)
            ds.epoch = epoch
            loader = torch.utils.data.DataLoader(
                ds,
                batch_size=bs,
                sampler=sampler,
                drop_last=True,
                collate_fn=collate,
                num_workers=cfg.num_workers,
            )
            for items in loader:
                if step >= stop:
                    break
                lr = schedule(step)
                for g in opt.param_groups:
                    g["lr"] = lr
                student.train()
                student.prompt_encoder.eval()
                x = torch.stack([it.image for it in items]).to(env.device, non_blocking=True)
                if cache is not None:
                    hashes = [it.sha256 for it in items] if cfg.cache and cfg.cache.verify_hash else None
                    emb_t = cache.batch([it.image_id for it in items], hashes).to(env.device)
                else:
                    with (
                        torch.no_grad(),
                        _autocast(
                            env.device, "fp16" if cfg.teacher.amp and env.device.type == "cuda" else "fp32"
                        ),
                    ):
                        emb_t = teacher.image_encoder(x).float()
                info: dict[str, Any] = {}
                if phase == 1:
                    with _autocast(env.device, cfg.precision):
                        emb_s = runner(x)
                    loss: torch.Tensor | None = phase1_loss(emb_s.float(), emb_t, items, cfg.image_size)
                    loss = loss * cfg.pixel_loss_weight  # type: ignore[union-attr]
                else:
                    st = Phase2Stats()
                    loss = runner(x, emb_t, items, _step_generator(cfg.seed, env.rank, step), st)
                    info = {
                        "prompt": st.prompt,
                        "prompts": st.num_prompts,
                        "bce": round(st.bce, 5),
                        "dice": round(st.dice, 5),
                        "points": st.points_sampled,
                        "dummy": st.dummy_points,
                    }
                opt.zero_grad(set_to_none=True)
                if loss is not None:
                    scaler.scale(loss).backward()
                    if cfg.optim.clip_grad:
                        scaler.unscale_(opt)
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.clip_grad))
                    else:
                        grad_norm = math.nan
                    scaler.step(opt)
                    scaler.update()
                    history.append(float(loss.detach()))
                step += 1
                if log_file is not None and loss is not None:
                    rec = {
                        "step": step,
                        "epoch": epoch,
                        "lr": lr,
                        "loss": round(float(loss.detach()), 6),
                        "grad_norm": round(grad_norm, 6),
                        **info,
                    }
                    log_file.write(json.dumps(rec) + "\n")
                    log_file.flush()
                if cfg.log_every and step % cfg.log_every == 0 and loss is not None:
                    say(
                        f"phase{phase} step {step}/{stop} epoch {epoch} loss {float(loss.detach()):.4f} "
                        f"lr {lr:.3e} ({time.perf_counter() - t0:.0f}s)"
                    )
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_last(step)
            if step % iters_per_epoch == 0 or step >= stop:
                save_last(step)
    finally:
        if log_file is not None:
            log_file.close()

    metrics: dict[str, Any] = {
        "phase": phase,
        "steps": step,
        "total_steps": total_iters,
        "iters_per_epoch": iters_per_epoch,
        "world_size": env.world,
        "seconds": round(time.perf_counter() - t0, 2),
        "lr_peak": schedule.peak,
        "lr_floor": schedule.floor,
    }
    if history:
        k = max(1, len(history) // 5)
        metrics["loss_first"] = float(np.mean(history[:k]))
        metrics["loss_last"] = float(np.mean(history[-k:]))
        metrics["steps_this_run"] = len(history)
        metrics["seconds_per_step"] = round(metrics["seconds"] / len(history), 4)
    if env.is_main:
        sd = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        if cfg.student.arch == "edge_sam":
            check_state_dict(sd)  # the official layout, or fail loudly
        _atomic_save(sd, out / FINAL_NAME)
        metrics["final"] = str(out / FINAL_NAME)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    env.barrier()
    return metrics
