"""The ``edgesam`` command line.

Engine: ``predict``, ``export``, ``weights``. Serving: ``serve`` (Label Studio ML backend). Pipelines:
``run``, ``validate``, ``schema``. Training: ``train-rpn``, ``finetune``, ``synthetic-data``,
``distill``, ``eval``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import weights

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as ``edgesam: error: ...`` with exit code 2."""


def _point(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise ValueError
        x, y, label = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,LABEL (pixels, label 1 or 0), got {text!r}") from None
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(f"point label must be 1 (positive) or 0 (negative), got {label}")
    return x, y, label


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
        if len(vals) != 4:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (pixels), got {text!r}") from None
    return vals  # type: ignore[return-value]


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment one image from point/box/mask prompts")
    p.add_argument("image", type=Path, help="image file (EXIF orientation is applied)")
    p.add_argument("--checkpoint", help="checkpoint path or model name (edge_sam, edge_sam_3x)")
    p.add_argument("--backend", choices=("torch", "onnx"), default="onnx")
    p.add_argument("--onnx-dir", type=Path, help="directory with encoder.onnx and decoder.onnx")
    p.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="X,Y,LABEL",
        help="a point in original-image pixels; LABEL 1 positive, 0 negative (repeatable)",
    )
    p.add_argument("--box", type=_box, metavar="X0,Y0,X1,Y1", help="a box in original-image pixels")
    p.add_argument("--mask-input", type=Path, metavar="FILE.npy", help="256x256 low-res logits to refine")
    p.add_argument(
        "--num-masks",
        type=int,
        choices=(1, 3, 4),
        default=3,
        help="1: single-mask token; 3: multimask tokens 1-3; 4: all tokens",
    )
    p.add_argument(
        "--score", choices=("stability", "iou"), default="stability", help="score that picks --png"
    )
    p.add_argument("--out", type=Path, metavar="OUT.npz", help="write logits, masks and scores")
    p.add_argument("--png", type=Path, metavar="OUT.png", help="write the best mask as a PNG")
    p.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export encoder.onnx and decoder.onnx from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint path or model name")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument(
        "--upsample",
        choices=("bicubic", "bilinear"),
        default="bicubic",
        help="fuse-neck upsampling (bicubic as trained; bilinear as the official export)",
    )
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    p.add_argument(
        "--plain-decoder",
        action="store_true",
        help="export the plain decoder graph (same inputs and outputs as the default fast one, slower)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write encoder.int8.onnx (static per-channel QDQ) and report its agreement with fp32",
    )
    p.add_argument(
        "--calibration-images",
        type=Path,
        metavar="DIR",
        help="images to calibrate the int8 encoder on and to measure its agreement (needed by --int8)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesam", description="EdgeSAM engine, exports and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_export(sub)
    _add_training(sub)
    _add_distill(sub)
    wp = sub.add_parser("weights", help="named checkpoints: fetch, list, path")
    weights.add_cli_arguments(wp)
    _add_serve(sub)
    _add_pipeline(sub)
    return parser


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic ``np.savez_compressed``."""
    from .fileio import atomic_open

    with atomic_open(path) as f:
        np.savez_compressed(f, **arrays)


def _save_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    from .fileio import atomic_open

    with atomic_open(path) as f:
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(f, format="PNG")


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine import EngineError, load_predictor
    from .runtime.image import ImageError, load_image
    from .runtime.prompts import PromptError

    if not args.point and args.box is None:
        raise CliError("give at least one --point X,Y,LABEL or a --box X0,Y0,X1,Y1")
    if args.checkpoint is None and args.onnx_dir is None:
        raise CliError("give --checkpoint (path or model name), or --onnx-dir for the onnx backend")
    mask_input = None
    if args.mask_input is not None:
        try:
            mask_input = np.load(args.mask_input)
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read --mask-input {args.mask_input}: {exc}") from None
    try:
        image = load_image(args.image)
        t0 = time.perf_counter()
        predictor = load_predictor(
            args.checkpoint, backend=args.backend, onnx_dir=args.onnx_dir, threads=args.threads
        )
        t1 = time.perf_counter()
        predictor.set_image(image)
        t2 = time.perf_counter()
        pts = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
        labels = np.array([p[2] for p in args.point]) if args.point else None
        pred = predictor.predict(pts, labels, args.box, mask_input, args.num_masks, return_logits=True)
        t3 = time.perf_counter()
    except (ImageError, PromptError, EngineError, weights.WeightsError, ValueError) as exc:
        raise CliError(str(exc)) from None
    best = pred.best(args.score)
    if args.out is not None:
        _save_npz(
            args.out,
            low_res_logits=pred.low_res_logits,
            logits=pred.logits,
            masks=pred.masks,
            iou_predictions=pred.iou_predictions,
            stability_scores=pred.stability_scores,
        )
    if args.png is not None:
        _save_png(args.png, pred.masks[best])
    summary = {
        "image": str(args.image),
        "size_hw": list(image.shape[:2]),
        "backend": args.backend,
        "num_masks": int(pred.masks.shape[0]),
        "best": best,
        "score": args.score,
        "stability_scores": [round(float(s), 6) for s in pred.stability_scores],
        "iou_predictions": [round(float(s), 6) for s in pred.iou_predictions],
        "mask_areas": [int(m.sum()) for m in pred.masks],
        "seconds": {"load": round(t1 - t0, 4), "encode": round(t2 - t1, 4), "decode": round(t3 - t2, 4)},
    }
    print(json.dumps(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from .model.checkpoint import CheckpointError
        from .model.export import ExportError, export_onnx
    except ImportError:
        raise CliError("export needs PyTorch: pip install 'edgesam-backend[torch]'") from None
    if args.int8 and args.calibration_images is None:
        raise CliError("--int8 needs --calibration-images DIR (images to calibrate the int8 encoder on)")
    if args.calibration_images is not None and not args.int8:
        raise CliError("--calibration-images is only used with --int8")
    try:
        ckpt = weights.checkpoint_path(args.checkpoint)
        res = export_onnx(
            ckpt,
            args.out,
            opset=args.opset,
            upsample_mode=args.upsample,
            validate=not args.no_validate,
            fast_decoder=not args.plain_decoder,
        )
    except (CheckpointError, ExportError, weights.WeightsError) as exc:
        raise CliError(str(exc)) from None
    summary = {
        "encoder": str(res.encoder_path),
        "decoder": str(res.decoder_path),
        "encoder_max_abs_diff": res.encoder_max_abs_diff,
        "decoder_max_abs_diff": res.decoder_max_abs_diff,
    }
    if args.int8:
        summary["int8"] = _export_int8(res.encoder_path, res.decoder_path, args.calibration_images)
    print(json.dumps(summary))
    return 0


def _export_int8(encoder: Path, decoder: Path, image_dir: Path) -> dict:
    """``encoder.int8.onnx`` next to ``encoder`` plus its agreement with fp32 on the same images."""
    from .runtime import quantize
    from .runtime.predictor import OnnxPredictor

    try:
        images = quantize.list_images(image_dir)
        int8_path = quantize.quantize_encoder(encoder, encoder.with_name(quantize.INT8_ENCODER_FILE), images)
        agree = quantize.agreement(OnnxPredictor(encoder, decoder), OnnxPredictor(int8_path, decoder), images)
        quantize.record_agreement(int8_path, agree)
    except (ValueError, quantize.QuantizationError) as exc:
        raise CliError(f"int8 export: {exc}") from None
    return {
        "encoder": str(int8_path),
        "calibration_images": len(images),
        "agreement_images": "the calibration images",
        "agreement": agree,
        # int8 stays opt-in (load_predictor(int8=True)); recommended only at mean best-mask IoU >= 0.95
        "recommended": bool(agree["passes"]),
    }


def _add_training(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-rpn", help="train the region proposal module on COCO-format boxes")
    p.add_argument("config", type=Path, help="YAML config (see RpnTrainConfig / schemas/)")
    p.add_argument("--max-steps", type=int, help="override max_steps")
    f = sub.add_parser("finetune", help="fine-tune EdgeSAM on ground-truth masks (COCO / Label Studio)")
    f.add_argument("config", type=Path, help="YAML config (schemas/finetune.schema.json)")
    f.add_argument("--max-steps", type=int, help="override max_steps")
    s = sub.add_parser("synthetic-data", help="write a synthetic COCO dataset of shapes (boxes + masks)")
    s.add_argument("out", type=Path)
    s.add_argument("--num-images", type=int, default=200)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)


def cmd_train_rpn(args: argparse.Namespace) -> int:
    try:
        from .training.rpn import RpnTrainConfig, train_rpn
    except ImportError:
        raise CliError("training needs PyTorch: pip install 'edgesam-backend[torch]'") from None
    from .yamlconfig import ConfigError, load_yaml_model

    try:
        cfg = load_yaml_model(args.config, RpnTrainConfig)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.max_steps is not None:
        cfg = cfg.model_copy(update={"max_steps": args.max_steps})
    try:
        metrics = train_rpn(cfg, log=lambda m: print(m, file=sys.stderr))
    except (OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(metrics))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    try:
        from .model.checkpoint import CheckpointError
        from .training.finetune import finetune
        from .training.finetune_config import FinetuneConfig
    except ImportError:
        raise CliError("training needs PyTorch: pip install 'edgesam-backend[torch]'") from None
    from .yamlconfig import ConfigError, load_yaml_model

    try:
        cfg = load_yaml_model(args.config, FinetuneConfig)
        if args.max_steps is not None:
            cfg = cfg.model_copy(update={"max_steps": args.max_steps})
        metrics = finetune(cfg, log=lambda m: print(m, file=sys.stderr))
    except (ConfigError, CheckpointError, weights.WeightsError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(metrics))
    return 0


def _add_distill(sub: argparse._SubParsersAction) -> None:
    """``distill phase1|phase2|cache CONFIG`` and ``eval CONFIG`` (see ``edgesam_backend/training``)."""
    d = sub.add_parser(
        "distill", help="distil SAM into EdgeSAM: phase1 (encoder), phase2 (prompt-in-the-loop)"
    )
    d.add_argument("phase", choices=("phase1", "phase2", "cache"), help="cache: only build the teacher cache")
    d.add_argument("config", type=Path, help="YAML config (schemas/distill-phase1|2.schema.json)")
    d.add_argument("--max-steps", type=int, help="override max_steps")
    e = sub.add_parser("eval", help="mIoU of EdgeSAM/SAM models with box/point prompts (+1/+2 points)")
    e.add_argument("config", type=Path, help="YAML config (schemas/eval.schema.json)")


def cmd_distill(args: argparse.Namespace) -> int:
    try:
        from .model.checkpoint import CheckpointError
        from .training import distill as dt
        from .training.cache import CacheError
        from .training.distill_config import EvalConfig, Phase1Config, Phase2Config
        from .training.evaluate import evaluate
    except ImportError:
        raise CliError("training needs PyTorch: pip install 'edgesam-backend[torch]'") from None
    from .yamlconfig import ConfigError, load_yaml_model

    def log(m: str) -> None:
        print(m, file=sys.stderr)

    try:
        if args.command == "eval":
            print(json.dumps(evaluate(load_yaml_model(args.config, EvalConfig), log=log)))
            return 0
        if args.phase == "cache":
            try:
                cfg = load_yaml_model(args.config, Phase1Config)
            except ConfigError:
                cfg = load_yaml_model(args.config, Phase2Config)
            print(json.dumps(dt.build_cache_only(cfg, log=log)))
            return 0
        cfg = load_yaml_model(args.config, Phase1Config if args.phase == "phase1" else Phase2Config)
        if args.max_steps is not None:
            cfg = cfg.model_copy(update={"max_steps": args.max_steps})
        print(json.dumps(dt.distill(cfg, log=log)))
    except (ConfigError, CheckpointError, CacheError, OSError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_synthetic_data(args: argparse.Namespace) -> int:
    from .training.synthetic import write_coco_dataset

    path = write_coco_dataset(args.out, args.num_images, size=args.size, seed=args.seed)
    print(json.dumps({"annotations": str(path), "images": str(args.out / "images")}))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .labelstudio.serve import add_arguments

    add_arguments(sub.add_parser("serve", help="run the Label Studio ML backend (HTTP, port 9090)"))


def cmd_serve(args: argparse.Namespace) -> int:
    """``edgesam serve``: the Label Studio ML backend (see ``edgesam_backend/labelstudio``)."""
    from .engine import EngineError
    from .labelstudio.serve import serve
    from .labelstudio.settings import SettingsError

    try:
        return serve(args)
    except (SettingsError, EngineError, weights.WeightsError) as exc:
        raise CliError(str(exc)) from None


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    """``run`` / ``validate`` / ``schema``: the YAML pipeline DSL (see ``edgesam_backend/pipeline``)."""
    from .pipeline.cli import add_arguments

    add_arguments(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command in ("distill", "eval"):
            return cmd_distill(args)
        if args.command == "train-rpn":
            return cmd_train_rpn(args)
        if args.command == "finetune":
            return cmd_finetune(args)
        if args.command == "synthetic-data":
            return cmd_synthetic_data(args)
        if args.command == "weights":
            return weights.run_cli(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command in ("run", "validate", "schema"):
            from .pipeline.cli import run_command

            return run_command(args, CliError)
    except CliError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
