"""What every benchmark script does with its result (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from edgesam_backend.runtime.model_files import PRECISIONS  # the resolver's --precision choices


def emit_result(result: Any, out: Path | None) -> None:
    """Print ``result`` as indented JSON and, with ``out`` (``--out``), write the same text there
    (newline-terminated)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def add_device_argument(ap: argparse.ArgumentParser) -> None:
    """``--device`` (default cpu): the model resolver's device option (``runtime/providers.py``)."""
    ap.add_argument(
        "--device",
        default="cpu",
        help="onnxruntime device: cpu, cuda[:N], tensorrt[:N], openvino, coreml or auto",
    )


def add_model_arguments(ap: argparse.ArgumentParser, precisions: tuple[str, ...] = PRECISIONS) -> None:
    """``--device`` and ``--precision``, passed to the model resolver (``load_predictor`` /
    ``edgesam serve`` / the pipeline's ``model:`` block) unchanged."""
    add_device_argument(ap)
    ap.add_argument(
        "--precision",
        choices=precisions,
        default="auto" if "auto" in precisions else precisions[0],
        help="ONNX files: fp16 pairs are written next to the fp32 export when missing (as "
        "`edgesam export --fp16`); auto: fp16 on cuda/tensorrt when present, else fp32",
    )


def ensure_precision_files(onnx_dir: Path, precision: str) -> dict[str, Any] | None:
    """For ``precision == "fp16"``: ``encoder.fp16.onnx`` + ``decoder.fp16.onnx`` next to the fp32 pair
    in ``onnx_dir``, converted now if absent; returns what was done (None for other precisions)."""
    if precision != "fp16":
        return None
    from edgesam_backend.runtime.model_files import fp16_files, onnx_files

    if all(p.is_file() for p in fp16_files(onnx_dir)):
        return {"written_now": False}
    from edgesam_backend.export.fp16 import export_fp16

    t = time.perf_counter()
    export_fp16(*onnx_files(onnx_dir))
    return {"written_now": True, "convert_s": round(time.perf_counter() - t, 1)}


def model_env(args: argparse.Namespace) -> dict[str, str]:
    """``EDGESAM_DEVICE`` / ``EDGESAM_PRECISION`` for an ``edgesam serve`` child, from the arguments."""
    return {"EDGESAM_DEVICE": str(args.device), "EDGESAM_PRECISION": str(args.precision)}
