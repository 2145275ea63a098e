"""The ``edgesam`` command line.

Engine (:mod:`.engine`): ``predict``, ``export``, ``weights``. Serving (:mod:`.serve`): ``serve`` (Label
Studio ML backend); :mod:`.precompute`: ``precompute`` (fill the embedding store).
Pipelines (:mod:`.pipeline`): ``run``, ``validate``, ``schema``. Training
(:mod:`.training`): ``train-rpn``, ``synthetic-data``, ``distill``, ``eval``. Each command is one
``add_parser`` with ``set_defaults(func=...)``; :func:`main` calls ``args.func(args)``. Every parser
shows its defaults in ``--help`` (:class:`.common.HelpFormatter`); Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import engine, pipeline, precompute, serve, training
from .common import EXIT_INTERRUPTED, EXIT_USAGE, CliError, HelpFormatter


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every (nested) subcommand parser."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out.extend(_subparsers(sub))
    return out


def all_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser of the command line (for ``--help`` checks)."""
    return _subparsers(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesam", description="EdgeSAM engine, exports and tools", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="`edgesam COMMAND --help` lists its options"
    )
    engine.register_predict_export(sub)
    training.register(sub)
    engine.register_weights(sub)
    serve.register(sub)
    precompute.register(sub)
    pipeline.register(sub)
    for p in _subparsers(parser):
        p.formatter_class = HelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgesam: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


__all__ = ["CliError", "all_parsers", "build_parser", "main"]
