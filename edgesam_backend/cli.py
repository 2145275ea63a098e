"""The ``edgesam`` command line.

Subcommands: ``predict`` (one image, points/box/mask prompts → .npz + .png), ``export`` (checkpoint →
encoder/decoder ONNX), ``weights`` (fetch/list/path of named checkpoints).
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesam", description="EdgeSAM engine, exports and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_predict(sub)
    _add_export(sub)
    wp = sub.add_parser("weights", help="named checkpoints: fetch, list, path")
    weights.add_cli_arguments(wp)
    return parser


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic ``np.savez_compressed``: write a temp file next to ``path`` and rename."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def _save_png(path: Path, mask: np.ndarray) -> None:
    import os

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(tmp, format="PNG")
    os.replace(tmp, path)


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine import EngineError, load_predictor
    from .runtime.base import PromptError
    from .runtime.image import ImageError, load_image

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
    try:
        ckpt = weights.checkpoint_path(args.checkpoint)
        res = export_onnx(
            ckpt, args.out, opset=args.opset, upsample_mode=args.upsample, validate=not args.no_validate
        )
    except (CheckpointError, ExportError, weights.WeightsError) as exc:
        raise CliError(str(exc)) from None
    print(
        json.dumps(
            {
                "encoder": str(res.encoder_path),
                "decoder": str(res.decoder_path),
                "encoder_max_abs_diff": res.encoder_max_abs_diff,
                "decoder_max_abs_diff": res.decoder_max_abs_diff,
            }
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "weights":
            return weights.run_cli(args)
    except CliError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
