"""EdgeSAM's two-phase distillation: ``edgesam distill phase1|phase2|cache config.yaml``.

Phase 1 (encoder-only KD): the student encoder is trained with the per-pixel MSE to the teacher's
embedding over the un-padded region (:func:`.losses.embedding_loss`). Phase 2 (prompt-in-the-loop
KD, :mod:`.phase2`): student encoder + decoder against the teacher decoder's masks.

One process on CPU, or ``torchrun --nproc_per_node N -m edgesam_backend.cli distill ...`` on GPUs
(DistributedDataParallel, one sampler slice per rank, rank-0 checkpoints; :mod:`.loop`).
``output_dir`` gets ``last.pth`` (resumable: model, optimiser, step), ``log.jsonl``,
``metrics.json`` and the final ``edge_sam_distilled.pth``: a plain state_dict in EdgeSAM's official
layout (real topology) that ``load_edge_sam`` / the engine / ``edgesam export`` load.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..model.checkpoint import check_state_dict, read_checkpoint_file
from ..model.edge_sam import EdgeSam
from ..model.sam_vit import SamTeacher
from .cache import EmbeddingCache, build_cache, cache_meta
from .data import DistillDataset, EpochSampler, Item, collate
from .distill_config import Phase1Config, Phase2Config
from .loop import (
    DistEnv,
    Log,
    LoopSettings,
    autocast,
    finish_run,
    num_threads,
    run_loop,
    setup_distributed,
    start_run,
    step_generator,
    wrap_ddp,
)
from .losses import embedding_loss
from .models import build_student, build_teacher, load_encoder_weights
from .phase2 import Phase2Module, Phase2Stats
from .schedule import make_optimizer, make_schedule

FINAL_NAME = "edge_sam_distilled.pth"


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


def _init_student(cfg: Phase1Config | Phase2Config, teacher: SamTeacher, say: Log) -> EdgeSam:
    """The student with the teacher's prompt encoder / decoder, its init weights and frozen parts."""
    student = build_student(
        cfg.image_size, cfg.student.arch, cfg.student.slim_widths, cfg.student.upsample_mode
    )
    student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
    student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
    if isinstance(cfg, Phase1Config):
        if cfg.init_encoder_from is not None:
            load_encoder_weights(student, cfg.init_encoder_from, strict=False, log=say)
        frozen = {"prompt_encoder": True, "image_encoder": False, "mask_decoder": True}
    else:
        if cfg.init_from is not None:
            load_encoder_weights(student, cfg.init_from, strict=True, log=say)
            if not cfg.init_decoder_from_teacher:
                sd = read_checkpoint_file(cfg.init_from)
                for name in ("prompt_encoder", "mask_decoder"):
                    part = {k[len(name) + 1 :]: v for k, v in sd.items() if k.startswith(name + ".")}
                    getattr(student, name).load_state_dict(part, strict=True)
        frozen = {
            "prompt_encoder": cfg.freeze_prompt_encoder,
            "image_encoder": cfg.freeze_image_encoder,
            "mask_decoder": cfg.freeze_mask_decoder,
        }
    for name, f in frozen.items():
        for p in getattr(student, name).parameters():
            p.requires_grad_(not f)
    return student


def distill(cfg: Phase1Config | Phase2Config, log: Log = print) -> dict[str, Any]:
    """Run (or resume) phase 1 or phase 2; returns the metrics dict (also in ``metrics.json``)."""
    with num_threads(cfg.threads):
        return _distill(cfg, log)


def _distill(cfg: Phase1Config | Phase2Config, log: Log) -> dict[str, Any]:
    phase = 2 if isinstance(cfg, Phase2Config) else 1
    env, out, say = start_run(cfg.device, cfg.seed, cfg.output_dir, log)

    ds = DistillDataset(cfg.data, cfg.image_size, seed=cfg.seed, hflip=cfg.hflip)
    teacher, cache = _prepare_teacher_and_cache(cfg, env, ds, say)
    student = _init_student(cfg, teacher, say).to(env.device)
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
    runner = wrap_ddp(
        student.image_encoder if phase == 1 else Phase2Module(student, teacher, cfg),  # type: ignore[arg-type]
        env,
        find_unused=phase == 2,
    )

    def batches(start: int) -> Iterator[tuple[int, list[Item]]]:
        step = start
        while True:
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
                yield epoch, items
                step += 1

    def teacher_embeddings(x: torch.Tensor, items: list[Item]) -> torch.Tensor:
        if cache is not None:
            hashes = [it.sha256 for it in items] if cfg.cache and cfg.cache.verify_hash else None
            return cache.batch([it.image_id for it in items], hashes).to(env.device)
        amp = "fp16" if cfg.teacher.amp and env.device.type == "cuda" else "fp32"
        with torch.no_grad(), autocast(env.device, amp):
            return teacher.image_encoder(x).float()

    def step_fn(batch: tuple[int, list[Item]], step: int) -> tuple[torch.Tensor | None, dict[str, Any]]:
        epoch, items = batch
        student.train()
        student.prompt_encoder.eval()
        x = torch.stack([it.image for it in items]).to(env.device, non_blocking=True)
        emb_t = teacher_embeddings(x, items)
        if phase == 1:
            with autocast(env.device, cfg.precision):
                emb_s = runner(x)
            loss = embedding_loss(emb_s.float(), emb_t, [it.input_hw for it in items], cfg.image_size)
            return loss * cfg.pixel_loss_weight, {"epoch": epoch}  # type: ignore[union-attr]
        st = Phase2Stats()
        loss = runner(x, emb_t, items, step_generator(cfg.seed, env.rank, step), st)
        info = {
            "epoch": epoch,
            "prompt": st.prompt,
            "prompts": st.num_prompts,
            "bce": round(st.bce, 5),
            "dice": round(st.dice, 5),
            "points": st.points_sampled,
            "dummy": st.dummy_points,
        }
        return loss, info

    settings = LoopSettings(
        output_dir=out,
        max_steps=stop,
        precision=cfg.precision,
        clip_grad=cfg.optim.clip_grad,
        checkpoint_every=cfg.checkpoint_every,
        epoch_steps=iters_per_epoch,
        log_every=cfg.log_every,
        resume=cfg.resume,
        name=f"phase{phase}",
        tag={"phase": phase},
        config=cfg.model_dump(mode="json"),
    )
    res = run_loop(
        settings=settings,
        env=env,
        model=student,
        optimizer=opt,
        schedule=schedule,
        batches=batches,
        step_fn=step_fn,
        log=say,
    )
    metrics: dict[str, Any] = {
        "phase": phase,
        "steps": res.step,
        "total_steps": total_iters,
        "iters_per_epoch": iters_per_epoch,
        "world_size": env.world,
        "seconds": round(res.seconds, 2),
        "lr_peak": schedule.peak,
        "lr_floor": schedule.floor,
    }
    if res.losses:
        metrics.update(res.loss_summary(parts=5))
        metrics["steps_this_run"] = len(res.losses)
        metrics["seconds_per_step"] = round(metrics["seconds"] / len(res.losses), 4)

    def checked(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if cfg.student.arch == "edge_sam":
            check_state_dict(sd)  # the official layout, or fail loudly
        return sd

    return finish_run(env, student, out / FINAL_NAME, metrics, package=checked)
