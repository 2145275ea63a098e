"""Prove the region proposal module learns: train on synthetic shapes (CPU), report held-out recall.

Generates COCO-format synthetic data (known objects, occlusion, clutter), measures proposal recall
of the untrained head, trains the RPN with the encoder trainable at a small input size, and
reports recall@IoU 0.5/0.75 at K = 10/100 on held-out images plus the RPN's share of encoder time.
Goal: recall@0.5 (K=100) ≥ 0.8. Prints one JSON object.

Usage: python benchmarks/rpn_synthetic.py [--steps 600] [--train 800] [--val 100] [--size 256] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch

    from edgesam_backend.model.edge_sam import build_edge_sam
    from edgesam_backend.training.rpn import CocoBoxes, RpnTrainConfig, evaluate_recall, train_rpn
    from edgesam_backend.training.synthetic import write_coco_dataset

    torch.set_num_threads(args.threads)
    work = args.out or Path(tempfile.mkdtemp(prefix="edgesam-rpn-"))
    t0 = time.perf_counter()
    write_coco_dataset(work / "train", args.train, size=args.size, seed=1)
    write_coco_dataset(work / "val", args.val, size=args.size, seed=2)
    gen_s = time.perf_counter() - t0

    torch.manual_seed(0)
    untrained = build_edge_sam(with_rpn=True)
    val = CocoBoxes(work / "val" / "images", work / "val" / "annotations.json", args.size)
    before = evaluate_recall(untrained, val)

    cfg = RpnTrainConfig(
        train_images=work / "train" / "images",
        train_annotations=work / "train" / "annotations.json",
        val_images=work / "val" / "images",
        val_annotations=work / "val" / "annotations.json",
        output_dir=work / "run",
        input_size=args.size,
        freeze_encoder=False,
        max_steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup_steps=min(50, args.steps // 10),
        log_every=50,
        checkpoint_every=100,
        eval_max_images=args.val,
        threads=args.threads,
    )
    metrics = train_rpn(cfg, log=lambda m: print(m, file=sys.stderr))

    # RPN share of encoder time at 1024 (PyTorch eager, inference)
    model = build_edge_sam(with_rpn=True).eval()
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        for _ in range(2):
            model.image_encoder.forward_with_stages(x)
        t = time.perf_counter()
        for _ in range(5):
            _, stages = model.image_encoder.forward_with_stages(x)
        enc_ms = (time.perf_counter() - t) / 5 * 1000
        t = time.perf_counter()
        for _ in range(5):
            model.rpn_head(stages)
        rpn_ms = (time.perf_counter() - t) / 5 * 1000
    params = sum(p.numel() for p in model.rpn_head.parameters())
    out = {
        "benchmark": "rpn_synthetic",
        "data": {
            "train_images": args.train,
            "val_images": args.val,
            "size": args.size,
            "generate_s": round(gen_s, 1),
        },
        "train": {"steps": args.steps, "batch": args.batch, "encoder": "trainable (random init)", **metrics},
        "recall_untrained": before,
        "goal": "recall@0.5_K100 >= 0.8",
        "rpn_params": params,
        "encoder_ms_1024_torch": round(enc_ms, 1),
        "rpn_ms_1024_torch": round(rpn_ms, 1),
        "rpn_share_of_encoder": round(rpn_ms / enc_ms, 3),
        "workdir": str(work),
    }
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
