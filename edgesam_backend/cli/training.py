"""``edgesam train-rpn``, ``finetune``, ``synthetic-data``, ``distill phase1|phase2|cache`` and ``eval``
(need torch, except ``synthetic-data``; see ``edgesam_backend/training``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import CliError

_NEEDS_TORCH = "training needs PyTorch: pip install 'edgesam-backend[torch]'"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-rpn", help="train the region proposal module on COCO-format boxes")
    p.add_argument("config", type=Path, help="YAML config (see RpnTrainConfig / schemas/)")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    p.set_defaults(func=cmd_train_rpn)

    f = sub.add_parser("finetune", help="fine-tune EdgeSAM on ground-truth masks (COCO / Label Studio)")
    f.add_argument("config", type=Path, help="YAML config (schemas/finetune.schema.json)")
    f.add_argument("--max-steps", type=int, help="override max_steps")
    f.set_defaults(func=cmd_finetune)

    s = sub.add_parser("synthetic-data", help="write a synthetic COCO dataset of shapes (boxes + masks)")
    s.add_argument("out", type=Path, help="output directory (images/ + instances.json)")
    s.add_argument("--num-images", type=int, default=200, help="number of images")
    s.add_argument("--size", type=int, default=256, help="image side (pixels)")
    s.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    s.set_defaults(func=cmd_synthetic_data)

    d = sub.add_parser(
        "distill", help="distil SAM into EdgeSAM: phase1 (encoder), phase2 (prompt-in-the-loop)"
    )
    d.add_argument("phase", choices=("phase1", "phase2", "cache"), help="cache: only build the teacher cache")
    d.add_argument("config", type=Path, help="YAML config (schemas/distill-phase1|2.schema.json)")
    d.add_argument("--max-steps", type=int, help="override max_steps")
    d.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", help="mIoU of EdgeSAM/SAM models with box/point prompts (+1/+2 points)")
    e.add_argument("config", type=Path, help="YAML config (schemas/eval.schema.json)")
    e.set_defaults(func=cmd_eval)


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_train_rpn(args: argparse.Namespace) -> int:
    try:
        from ..training.rpn import RpnTrainConfig, train_rpn
    except ImportError:
        raise CliError(_NEEDS_TORCH) from None
    from ..yamlconfig import ConfigError, load_yaml_model

    try:
        cfg = load_yaml_model(args.config, RpnTrainConfig)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.max_steps is not None:
        cfg = cfg.model_copy(update={"max_steps": args.max_steps})
    try:
        metrics = train_rpn(cfg, log=_log)
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(metrics))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    try:
        from ..model.checkpoint import CheckpointError
        from ..training.finetune import finetune
        from ..training.finetune_config import FinetuneConfig
    except ImportError:
        raise CliError(_NEEDS_TORCH) from None
    from .. import weights
    from ..yamlconfig import ConfigError, load_yaml_model

    try:
        cfg = load_yaml_model(args.config, FinetuneConfig)
        if args.max_steps is not None:
            cfg = cfg.model_copy(update={"max_steps": args.max_steps})
        metrics = finetune(cfg, log=_log)
    except (ConfigError, CheckpointError, weights.WeightsError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(metrics))
    return 0


def cmd_synthetic_data(args: argparse.Namespace) -> int:
    from ..training.synthetic import write_coco_dataset

    path = write_coco_dataset(args.out, args.num_images, size=args.size, seed=args.seed)
    print(json.dumps({"annotations": str(path), "images": str(args.out / "images")}))
    return 0


def _training_errors() -> tuple[type[BaseException], ...]:
    """The user-facing error types of the distillation/eval code (imports torch)."""
    try:
        from ..model.checkpoint import CheckpointError
        from ..training.cache import CacheError
    except ImportError:
        raise CliError(_NEEDS_TORCH) from None
    from ..yamlconfig import ConfigError

    return (ConfigError, CheckpointError, CacheError, OSError, ValueError)


def cmd_distill(args: argparse.Namespace) -> int:
    errors = _training_errors()
    from ..training import distill as dt
    from ..training.distill_config import Phase1Config, Phase2Config
    from ..yamlconfig import ConfigError, load_yaml_model

    try:
        if args.phase == "cache":
            try:
                cfg = load_yaml_model(args.config, Phase1Config)
            except ConfigError:
                cfg = load_yaml_model(args.config, Phase2Config)
            print(json.dumps(dt.build_cache_only(cfg, log=_log)))
            return 0
        cfg = load_yaml_model(args.config, Phase1Config if args.phase == "phase1" else Phase2Config)
        if args.max_steps is not None:
            cfg = cfg.model_copy(update={"max_steps": args.max_steps})
        print(json.dumps(dt.distill(cfg, log=_log)))
    except errors as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    errors = _training_errors()
    from ..training.distill_config import EvalConfig
    from ..training.evaluate import evaluate
    from ..yamlconfig import load_yaml_model

    try:
        print(json.dumps(evaluate(load_yaml_model(args.config, EvalConfig), log=_log)))
    except errors as exc:
        raise CliError(str(exc)) from None
    return 0
