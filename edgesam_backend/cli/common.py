"""Shared pieces of the ``edgesam`` command line: the user-error type and argument parsers."""

from __future__ import annotations

import argparse

from ..runtime.model_files import PRECISIONS

EXIT_USAGE = 2
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with ``(default: X)`` after each option that has a meaningful default (not for
    ``None``/``False``/empty defaults, or when the help text already names it)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class CliError(Exception):
    """A user-facing error: printed as ``edgesam: error: ...`` with exit code 2."""


def parse_point(text: str) -> tuple[float, float, int]:
    """``X,Y,LABEL`` (original-image pixels; label 1 positive, 0 negative)."""
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


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``X0,Y0,X1,Y1`` (original-image pixels)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
        if len(vals) != 4:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 (pixels), got {text!r}") from None
    return vals  # type: ignore[return-value]


def add_device_argument(p: argparse.ArgumentParser, env: str | None = None) -> None:
    """``--device`` (onnxruntime execution providers; see ``runtime/providers.py``)."""
    where = f"env {env}, " if env else ""
    p.add_argument(
        "--device",
        default=None,
        help=f"cpu, cuda[:N], tensorrt[:N], openvino, coreml or auto ({where}default cpu)",
    )


def add_precision_argument(p: argparse.ArgumentParser, env: str | None = None) -> None:
    """``--precision`` (which ONNX file set: ``runtime/resolve.py``); ``None`` when not given."""
    where = f"env {env}, " if env else ""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="ONNX files: fp32, fp16 (encoder/decoder.fp16.onnx from `edgesam export --fp16`), int8 "
        f"(encoder.int8.onnx) or auto: fp16 on cuda/tensorrt when those files exist, else fp32 ({where}"
        "default auto)",
    )
