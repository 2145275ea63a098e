"""``edgesam run | validate | schema``: the YAML pipeline DSL (see ``edgesam_backend/pipeline``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..pipeline import storage
from .common import EXIT_INTERRUPTED, CliError, add_device_argument, add_precision_argument

DEFAULT_SCHEMA_PATH = Path("schemas") / "pipeline.schema.json"


def register(sub: argparse._SubParsersAction) -> None:
    sets = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a config value: steps[1].points_per_side=16, steps[prompt.grid].points_per_side=16",
    }
    r = sub.add_parser("run", help="run a YAML pipeline (bulk segmentation; resumes where it stopped)")
    r.add_argument("pipeline", type=Path, help="pipeline YAML")
    r.add_argument("--set", dest="overrides", **sets)
    r.add_argument(
        "--output-dir", help="override output_dir (relative to the current directory, or a URL: s3://...)"
    )
    r.add_argument("--executor", choices=("local", "ray"), help="override the executor type")
    r.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    add_device_argument(r)
    add_precision_argument(r)
    r.set_defaults(func=cmd_run)
    v = sub.add_parser("validate", help="check a YAML pipeline (schema, types, step order, files, model)")
    v.add_argument("pipeline", type=Path, help="pipeline YAML")
    v.add_argument("--set", dest="overrides", **sets)
    v.add_argument("--no-check-paths", action="store_true", help="do not require input files to exist")
    v.add_argument(
        "--no-check-model",
        action="store_true",
        help="do not check that the model resolves (by default checked offline: files on disk, never "
        "downloaded or exported; an uncached model is reported as not checked)",
    )
    v.set_defaults(func=cmd_validate)
    s = sub.add_parser(
        "schema", help="write the pipeline JSON Schema (default: schemas/pipeline.schema.json)"
    )
    s.add_argument("--out", default=str(DEFAULT_SCHEMA_PATH), help="output file, or - for stdout")
    s.add_argument("--check", action="store_true", help="exit 1 if the file is not up to date")
    s.add_argument(
        "--all-steps",
        action="store_true",
        help="include third-party steps (the committed schema has built-ins only)",
    )
    s.set_defaults(func=cmd_schema)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if getattr(args, "output_dir", None) is not None:
        od = str(args.output_dir)
        out.append(f"output_dir={json.dumps(od if storage.is_url(od) else str(Path(od).resolve()))}")
    if getattr(args, "device", None) is not None:
        out.append(f"model.device={json.dumps(args.device)}")
    if getattr(args, "precision", None) is not None:
        out.append(f"model.precision={json.dumps(args.precision)}")
    return out


def cmd_schema(args: argparse.Namespace) -> int:
    from ..pipeline.config import pipeline_json_schema
    from ..yamlconfig import schema_text

    text = schema_text(pipeline_json_schema(builtins_only=not args.all_steps))
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else None
        if current != text:
            print(f"edgesam: {out} is out of date: run `edgesam schema`", file=sys.stderr)
            return 1
        print(json.dumps({"schema": str(out), "up_to_date": True}))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(json.dumps({"schema": str(out)}))
    return 0


def _load(args: argparse.Namespace) -> Any:
    from ..pipeline.loader import load_pipeline
    from ..yamlconfig import ConfigError

    try:
        return load_pipeline(
            args.pipeline, _overrides(args), check_paths=not getattr(args, "no_check_paths", False)
        )
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_validate(args: argparse.Namespace) -> int:
    from ..pipeline.base import PipelineError
    from ..pipeline.model_check import check_model

    pipe = _load(args)
    steps = [s.kind for s in pipe.steps]
    checked = ["yaml", "env", "pydantic", "step order"]
    if not args.no_check_paths:
        checked.append("files")
    checked.append("jsonschema")
    model: dict[str, Any] = {"checked": False, "status": "skipped (--no-check-model)"}
    if not args.no_check_model:
        try:
            model = check_model(pipe)
        except PipelineError as exc:
            raise CliError(str(exc)) from None
        if model["checked"]:
            checked.append("model")
        else:
            print(f"edgesam: warning: {model['message']}", file=sys.stderr)
    info: dict[str, Any] = {
        "valid": True,
        "pipeline": str(args.pipeline),
        "steps": steps,
        "executor": pipe.executor.type,
        "output_dir": pipe.output_dir,
        "checked": checked,
        "model": model,
    }
    print(json.dumps(info))
    return 0


@contextlib.contextmanager
def cli_logging(quiet: bool) -> Iterator[None]:
    """``edgesam_backend`` log lines on stderr as ``edgesam: ...`` while the command runs: INFO (the
    model line at the start: files, device, providers, precision), only warnings with ``--quiet``. Left
    alone when the process configured logging itself (handlers on the root logger)."""
    logger = logging.getLogger("edgesam_backend")
    if logging.getLogger().handlers or logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edgesam: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def cmd_run(args: argparse.Namespace) -> int:
    from ..pipeline.base import PipelineError
    from ..pipeline.run_errors import OutputDirError, PipelineInterrupted, PipelineStopped
    from ..pipeline.runner import run_pipeline

    pipe = _load(args)
    try:
        with cli_logging(args.quiet):
            summary = run_pipeline(pipe, executor=args.executor, progress=not args.quiet)
    except PipelineInterrupted as exc:
        print(json.dumps(exc.summary))
        print(f"edgesam: {exc}", file=sys.stderr)
        if threading.active_count() > 1:
            # abandoned images' threads may still be inside onnxruntime: interpreter shutdown under them
            # aborts the process, so leave now (the store is released, results are atomic)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except PipelineStopped as exc:  # max_errors (1) or every image failed (3)
        print(json.dumps(exc.summary))
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OutputDirError as exc:
        print(f"edgesam: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except PipelineError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(summary))
    return 0
