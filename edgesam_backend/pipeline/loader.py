"""``load_pipeline(path)``: read a pipeline YAML and report every problem as ``file:line:col: key.path:
message``:

1. YAML syntax;
2. ``${VAR}`` / ``${VAR:-default}`` expansion in string scalars (the default applies when the variable is
   unset or empty, as in the shell); a *plain* (unquoted) scalar that is exactly one ``${...}`` takes the
   YAML type of its value (``points_per_side: ${PPS:-32}`` is an integer, ``${DIR:-}`` is null); quote it
   to keep a string (both done by :func:`edgesam_backend.yamlconfig.read_yaml`);
3. ``--set key.path=value`` overrides (:mod:`.overrides`); errors in what they set name the ``--set``
   argument instead of a YAML line;
4. pydantic validation of the model built from the step registry (steps are a union discriminated on
   ``kind``; unknown keys are errors; input paths resolve against the YAML's directory and must exist);
5. the step order and cross-step checks (:mod:`.checks`), each error at its step's line;
6. JSON Schema validation (jsonschema, the schema ``edgesam schema`` writes), which also rejects what
   pydantic would coerce (``points_per_side: "32"``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from ..yamlconfig import read_yaml
from .checks import check_structure
from .config import PipelineBase, pipeline_model
from .diagnostics import YamlErrors, pydantic_errors, schema_errors
from .overrides import apply_override
from .registry import load_registry


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    check_paths: bool = True,
) -> PipelineBase:
    """Read, expand, override and validate a pipeline YAML (see the module docstring)."""
    p = Path(path)
    root, data = read_yaml(p, expected="model, output_dir, steps, ...")
    set_at = {apply_override(data, o): o for o in overrides}
    reg = load_registry()
    model = pipeline_model()
    errs = YamlErrors(p, root, set_at, data)
    base_dir = p.resolve().parent
    try:
        pipe = model.model_validate(data, context={"base_dir": base_dir, "check_paths": check_paths})
    except ValidationError as exc:
        pydantic_errors(exc, data, errs, reg)
        errs.raise_if_any()
        raise  # pragma: no cover - every error is reported above
    check_structure(pipe, reg, errs)
    errs.raise_if_any()
    schema_errors(data, errs, reg)
    errs.raise_if_any()
    pipe._source = str(p)
    pipe._where = {i: errs.where(("steps", i)) for i in range(len(pipe.steps))}  # type: ignore[attr-defined]
    return pipe


__all__ = ["load_pipeline"]
