"""Per-step cost of EdgeSAM distillation on the CPU (phase 1 and phase 2), printed as JSON.

The real EdgeSAM student (RepViT-M1 + fuse neck + SAM decoder) and a tiny random SAM ViT teacher (its
encoder only produces the target embeddings; the decoder is SAM's full-size one) on synthetic images,
batch 2, ``max_prompts`` 4, 2 decode iterations, AdamW; the first ``--warmup`` steps (allocator
warm-up) are excluded from the median.

    python benchmarks/distill.py --sizes 128 256 --steps 8 --threads 1 --out distill_bench.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import emit_result

from edgesam_backend.training.data import DistillDataset
from edgesam_backend.training.distill_config import DataConfig, Phase2Config
from edgesam_backend.training.losses import embedding_loss
from edgesam_backend.training.models import build_student, build_teacher
from edgesam_backend.training.phase2 import Phase2Stats, phase2_loss
from edgesam_backend.training.schedule import make_optimizer
from edgesam_backend.training.synthetic import write_coco_dataset


def bench(size: int, steps: int, warmup: int, data: Path) -> dict:
    dcfg = DataConfig(format="coco", images=data / "images", annotations=data / "annotations.json")
    ds = DistillDataset(dcfg, size)
    teacher = build_teacher("tiny", None, size).eval()
    p2 = Phase2Config.model_validate(
        {
            "data": dcfg.model_dump(),
            "teacher": {"kind": "tiny", "random_init": True},
            "output_dir": "unused",
            "image_size": size,
            "max_prompts": 4,
        }
    )
    out: dict = {"image_size": size, "embedding": size // 16, "mask": size // 4, "batch": 2}
    for phase in (1, 2):
        student = build_student(size)
        student.prompt_encoder.load_state_dict(teacher.prompt_encoder.state_dict())
        student.mask_decoder.load_state_dict(teacher.mask_decoder.state_dict())
        for p in student.prompt_encoder.parameters():
            p.requires_grad_(False)
        if phase == 1:
            for p in student.mask_decoder.parameters():
                p.requires_grad_(False)
        opt = make_optimizer(student, p2.optim)
        student.train()
        times, losses, prompts = [], [], []
        for step in range(steps + warmup):
            items = [ds[(2 * step) % len(ds)], ds[(2 * step + 1) % len(ds)]]
            x = torch.stack([it.image for it in items])
            t0 = time.perf_counter()
            with torch.no_grad():
                emb_t = teacher.image_encoder(x)
            t1 = time.perf_counter()
            emb_s = student.image_encoder(x)
            if phase == 1:
                loss = embedding_loss(emb_s, emb_t, [it.input_hw for it in items], size)
            else:
                st = Phase2Stats()
                loss = phase2_loss(
                    student, teacher, emb_s, emb_t, items, p2, torch.Generator().manual_seed(step), st
                )
                prompts.append(st.num_prompts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.requires_grad], 5.0)
            opt.step()
            t2 = time.perf_counter()
            if step >= warmup:
                times.append(t2 - t1)
                losses.append(float(loss.detach()))
            else:
                out.setdefault(f"phase{phase}_warmup_s", []).append(round(t2 - t0, 3))
            out[f"teacher_encoder_s_{phase}"] = round(t1 - t0, 4)
        out[f"phase{phase}_step_s_median"] = round(statistics.median(times), 4)
        out[f"phase{phase}_step_s_min"] = round(min(times), 4)
        if prompts:
            out["phase2_prompts_per_batch"] = round(statistics.mean(prompts), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for size in args.sizes:
            data = Path(tmp) / f"d{size}"
            write_coco_dataset(data, 8, size=(size * 3 // 4, size), seed=0, max_objects=6)
            results.append(bench(size, args.steps, args.warmup, data))
    report = {
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "note": "student = real EdgeSAM (RepViT-M1 fuse + SAM decoder); step = forward+backward+AdamW",
        "results": results,
    }
    emit_result(report, args.out)


if __name__ == "__main__":
    main()
