"""``edgesam predict``, ``edgesam export`` and ``edgesam weights fetch|list|path``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import weights
from ..runtime.model_files import INT8_ENCODER_FILE
from .common import CliError, add_device_argument, add_precision_argument, parse_box, parse_point

#: ``edgesam predict``'s model when neither ``--checkpoint`` nor ``--onnx-dir`` is given.
DEFAULT_CHECKPOINT = "edge_sam_3x"


def register_predict_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment one image from point/box/mask prompts")
    p.add_argument("image", type=Path, help="image file (EXIF orientation is applied)")
    p.add_argument(
        "--checkpoint",
        help="checkpoint path or model name (edge_sam, edge_sam_3x); default: edge_sam_3x, unless "
        "--onnx-dir is given",
    )
    p.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="onnx",
        help="onnxruntime (no torch needed) or the PyTorch model",
    )
    p.add_argument("--onnx-dir", type=Path, help="directory with encoder.onnx and decoder.onnx")
    p.add_argument(
        "--point",
        type=parse_point,
        action="append",
        default=[],
        metavar="X,Y,LABEL",
        help="a point in original-image pixels; LABEL 1 positive, 0 negative (repeatable)",
    )
    p.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1", help="a box in original-image pixels")
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
    p.add_argument("--int8", action="store_true", help="use encoder.int8.onnx (onnx backend)")
    add_device_argument(p)
    add_precision_argument(p)
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="export encoder.onnx and decoder.onnx from a checkpoint")
    e.add_argument("--checkpoint", required=True, help="checkpoint path or model name")
    e.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for encoder.onnx + decoder.onnx"
    )
    e.add_argument(
        "--upsample",
        choices=("bicubic", "bilinear"),
        default="bicubic",
        help="fuse-neck upsampling (bicubic as trained; bilinear as the official export)",
    )
    e.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    e.add_argument("--no-validate", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    e.add_argument(
        "--plain-decoder",
        action="store_true",
        help="export the plain decoder graph (same inputs and outputs as the default fast one, slower)",
    )
    e.add_argument(
        "--int8",
        action="store_true",
        help=f"also write {INT8_ENCODER_FILE} (static per-channel QDQ) and report its agreement with fp32",
    )
    e.add_argument(
        "--fp16",
        action="store_true",
        help="also write encoder.fp16.onnx + decoder.fp16.onnx (float16, float32 IO; for GPUs) and report "
        "their agreement with fp32 (on --calibration-images if given, else on a synthetic image)",
    )
    e.add_argument(
        "--calibration-images",
        type=Path,
        metavar="DIR",
        help="images to calibrate the int8 encoder on (needed by --int8); every 4th is held out to measure "
        "its agreement with fp32 unless --agreement-images is given",
    )
    e.add_argument(
        "--agreement-images",
        type=Path,
        metavar="DIR",
        help="images (not used for calibration) to measure the int8 encoder's agreement on",
    )
    e.set_defaults(func=cmd_export)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic ``np.savez_compressed``."""
    from ..fileio import atomic_open

    with atomic_open(path) as f:
        np.savez_compressed(f, **arrays)


def _save_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    from ..fileio import atomic_open

    with atomic_open(path) as f:
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(f, format="PNG")


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine import EngineError, load_predictor
    from ..runtime.image import ImageError, load_image
    from ..runtime.prompts import PromptError

    if not args.point and args.box is None:
        raise CliError("give at least one --point X,Y,LABEL or a --box X0,Y0,X1,Y1")
    checkpoint = args.checkpoint
    if checkpoint is None and (args.onnx_dir is None or args.backend == "torch"):
        checkpoint = DEFAULT_CHECKPOINT
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
            checkpoint,
            backend=args.backend,
            onnx_dir=args.onnx_dir,
            threads=args.threads,
            int8=args.int8,
            device=args.device or "cpu",
            precision=args.precision or "auto",
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
    providers = getattr(predictor, "providers", None)
    if providers is not None and args.device is not None:
        summary["providers"] = list(providers)
    precision = getattr(predictor, "precision", None)
    if precision is not None:
        summary["precision"] = precision
    print(json.dumps(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    try:
        from ..export.onnx import ExportError, export_onnx
        from ..model.checkpoint import CheckpointError
    except ImportError:
        raise CliError("export needs PyTorch: pip install 'edgesam-backend[torch]'") from None
    if args.int8 and args.calibration_images is None:
        raise CliError("--int8 needs --calibration-images DIR (images to calibrate the int8 encoder on)")
    if args.calibration_images is not None and not (args.int8 or args.fp16):
        raise CliError("--calibration-images is only used with --int8 / --fp16")
    if args.agreement_images is not None and not args.int8:
        raise CliError("--agreement-images is only used with --int8")
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
    summary: dict[str, Any] = {
        "encoder": str(res.encoder_path),
        "decoder": str(res.decoder_path),
        "encoder_max_abs_diff": res.encoder_max_abs_diff,
        "decoder_max_abs_diff": res.decoder_max_abs_diff,
    }
    if args.int8:
        summary["int8"] = _export_int8(
            res.encoder_path, res.decoder_path, args.calibration_images, args.agreement_images
        )
    if args.fp16:
        summary["fp16"] = _export_fp16(res.encoder_path, res.decoder_path, args.calibration_images)
    print(json.dumps(summary))
    return 0


def _export_int8(
    encoder: Path, decoder: Path, image_dir: Path, agreement_dir: Path | None = None
) -> dict[str, Any]:
    """``encoder.int8.onnx`` next to ``encoder`` plus its agreement with fp32, measured on images it was
    not calibrated on: ``agreement_dir``, else every 4th image of ``image_dir`` held out (with a single
    image, that image, and the report says so)."""
    from ..export.agreement import agreement, record_agreement, split_held_out
    from ..export.calibration import list_images
    from ..export.int8 import QuantizationError, quantize_encoder
    from ..runtime.predictor import OnnxPredictor

    try:
        images = list_images(image_dir)
        if agreement_dir is not None:
            calib, held = images, list_images(agreement_dir)
            held = [p for p in held if p.resolve() not in {c.resolve() for c in calib}]
            if not held:
                raise ValueError(f"--agreement-images {agreement_dir} holds only calibration images")
            where = f"{len(held)} images of {agreement_dir} (not used for calibration)"
        else:
            calib, held = split_held_out(images)
            where = (
                f"{len(held)} held-out images of {image_dir} (every 4th; not used for calibration)"
                if held != calib
                else "the single calibration image (give more images, or --agreement-images, to measure "
                "on images not used for calibration)"
            )
        int8_path = quantize_encoder(encoder, encoder.with_name(INT8_ENCODER_FILE), calib)
        agree = agreement(OnnxPredictor(encoder, decoder), OnnxPredictor(int8_path, decoder), held)
        agree["held_out"] = held != calib
        record_agreement(int8_path, agree)
    except (ValueError, QuantizationError) as exc:
        raise CliError(f"int8 export: {exc}") from None
    return {
        "encoder": str(int8_path),
        "calibration_images": len(calib),
        "agreement_images": where,
        "agreement": agree,
        # int8 stays opt-in (load_predictor(int8=True)); recommended only at mean best-mask IoU >= 0.95
        "recommended": bool(agree["passes"]),
    }


def _export_fp16(encoder: Path, decoder: Path, image_dir: Path | None) -> dict[str, Any]:
    """The float16 pair next to the fp32 files plus its agreement with fp32 (recorded in both files)."""
    from ..export.agreement import agreement, record_agreement
    from ..export.calibration import list_images
    from ..export.fp16 import Fp16Error, export_fp16
    from ..runtime.predictor import OnnxPredictor

    try:
        enc16, dec16 = export_fp16(encoder, decoder)
        images: list[Any] = list(list_images(image_dir)) if image_dir is not None else [_synthetic_image()]
        agree = agreement(OnnxPredictor(encoder, decoder), OnnxPredictor(enc16, dec16), images)
        for p in (enc16, dec16):
            record_agreement(p, agree, variant="fp16")
    except (ValueError, Fp16Error) as exc:
        raise CliError(f"fp16 export: {exc}") from None
    return {
        "encoder": str(enc16),
        "decoder": str(dec16),
        "agreement_images": str(image_dir) if image_dir is not None else "one synthetic image",
        "agreement": agree,
        "recommended": bool(agree["passes"]),
    }


def _synthetic_image() -> Any:
    """A fixed 512x768 RGB test card (discs and gradients) for agreement checks without images."""
    yy, xx = np.mgrid[0:512, 0:768]
    img = np.stack([xx * 255 // 767, yy * 255 // 511, (xx + yy) % 256], axis=-1).astype(np.uint8)
    for cy, cx, r, c in (
        (150, 200, 80, (250, 30, 30)),
        (330, 520, 120, (20, 220, 40)),
        (380, 160, 60, (0, 0, 0)),
    ):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = c
    return img


# --- weights ---------------------------------------------------------------------------------------
def register_weights(sub: argparse._SubParsersAction) -> None:
    """``weights fetch|list|path``: exit 0 on success, 1 for ``path`` of an uncached model, 2 on errors."""
    wp = sub.add_parser("weights", help="named checkpoints: fetch, list, path")
    actions = wp.add_subparsers(
        dest="weights_action", metavar="ACTION", required=True, help="fetch, list or path"
    )
    names = ", ".join(weights.MODELS)

    f = actions.add_parser("fetch", help="download a checkpoint into the cache (if needed)")
    f.add_argument("name", metavar="NAME", help=f"model name ({names})")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.add_argument("--sha256", metavar="HEX", default=None, help="expected sha256 of the file")
    f.add_argument("--url", metavar="URL", default=None, help="download from this URL instead")
    f.set_defaults(func=cmd_weights_fetch)

    ls = actions.add_parser("list", help="list known checkpoints and whether they are cached")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_weights_list)

    p = actions.add_parser("path", help="print the cached path of a checkpoint (never downloads)")
    p.add_argument("name", metavar="NAME", help=f"model name ({names})")
    p.set_defaults(func=cmd_weights_path)


def _human(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.1f} MiB"


def progress_printer(filename: str) -> weights.ProgressCallback:
    """A download progress callback writing ``downloading NAME: done / total bytes`` to stderr
    (one refreshed line on a terminal, a line every 2 s otherwise)."""
    stream = sys.stderr
    tty = stream.isatty()
    interval = 0.2 if tty else 2.0
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if not finished and now - last[0] < interval:
            return
        last[0] = now
        pct = f" ({100.0 * done / total:.0f}%)" if total else ""
        line = f"downloading {filename}: {done} / {total if total is not None else '?'} bytes"
        line += f" [{_human(done)} / {_human(total)}]{pct}"
        if tty:
            stream.write("\r" + line + ("\n" if finished else ""))
        else:
            stream.write(line + "\n")
        stream.flush()

    return report


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    from ..weights.api import not_cached_error
    from ..weights.registry import resolve_url

    try:
        spec = weights.model_spec(args.name)
        try:
            path = weights.fetch(
                args.name,
                force=args.force,
                sha256=args.sha256,
                url=args.url,
                progress=progress_printer(spec.filename),
            )
        except weights.WeightsUnavailableError as exc:
            dest = weights.cached_path(args.name)
            if dest.is_file():
                raise
            raise not_cached_error(spec, dest, resolve_url(spec, args.url), exc) from exc
    except weights.WeightsError as exc:
        raise CliError(str(exc)) from None
    print(path)
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    rows = weights.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            state = f"cached ({_human(row['size'])})" if row["cached"] else "not cached"
            print(f"{row['name']:<14} {state:<22} {row['path']}")
    return 0


def cmd_weights_path(args: argparse.Namespace) -> int:
    try:
        path = weights.checkpoint_path(args.name, download=False)
    except weights.WeightsUnavailableError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return 1
    except weights.WeightsError as exc:
        raise CliError(str(exc)) from None
    print(path)
    return 0
