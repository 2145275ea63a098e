"""The ``edgesam`` command line.

Engine (:mod:`.engine`): ``predict``, ``export``, ``weights``. Serving (:mod:`.serve`): ``serve`` (Label
Studio ML backend); :mod:`.precompute`: ``precompute`` (fill the embedding store).
Pipelines (:mod:`.pipeline`): ``run``, ``validate``, ``schema``. Training
(:mod:`.training`): ``train-rpn``, ``synthetic-data``, ``distill``, ``eval``. Each command is one
``add_parser`` with ``set_defaults(func=...)``; :func:`main` calls ``args.func(args)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import engine, pipeline, precompute, serve, training
from .common import EXIT_USAGE, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesam", description="EdgeSAM engine, exports and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    engine.register_predict_export(sub)
    training.register(sub)
    engine.register_weights(sub)
    serve.register(sub)
    precompute.register(sub)
    pipeline.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


__all__ = ["CliError", "build_parser", "main"]
