"""Field types shared by step configs: paths resolved against the YAML file's directory, score ranges.

Path fields resolve relative paths against ``context["base_dir"]`` (the directory of the pipeline YAML)
(URLs such as ``s3://bucket/x`` are kept as they are and not checked: see :mod:`.storage`) and, with
``context["check_paths"]`` (the default when a base dir is given), check that inputs exist, so
a missing file is reported at its YAML line. Without a validation context (configs re-validated inside
workers, whose paths are already absolute) they are left as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, ValidationInfo

from .storage import is_url


def _resolve(value: str, info: ValidationInfo) -> tuple[Path, bool]:
    """Local paths only (URLs are returned unchanged by the validators below)."""
    ctx = info.context or {}
    p = Path(value).expanduser()
    base = ctx.get("base_dir")
    if base is not None and not p.is_absolute():
        p = Path(base) / p
    p = Path(os.path.normpath(p)) if p.is_absolute() else p
    check = base is not None and ctx.get("check_paths", True)
    return p, check


def _input_file(value: str, info: ValidationInfo) -> str:
    if is_url(value):
        return value
    p, check = _resolve(value, info)
    if check and not p.is_file():
        raise ValueError(f"file not found: {p}" if not p.exists() else f"not a file: {p}")
    return str(p)


def _input_dir(value: str, info: ValidationInfo) -> str:
    if is_url(value):
        return value.rstrip("/")
    p, check = _resolve(value, info)
    if check and not p.is_dir():
        raise ValueError(f"directory not found: {p}" if not p.exists() else f"not a directory: {p}")
    return str(p)


def _any_path(value: str, info: ValidationInfo) -> str:
    if is_url(value):
        return value.rstrip("/")
    return str(_resolve(value, info)[0])


#: An existing file; relative to the YAML file.
InputFile = Annotated[str, Field(min_length=1), AfterValidator(_input_file)]
#: An existing directory; relative to the YAML file.
InputDir = Annotated[str, Field(min_length=1), AfterValidator(_input_dir)]
#: Any path (not checked; e.g. an output directory); relative to the YAML file.
AnyPath = Annotated[str, Field(min_length=1), AfterValidator(_any_path)]

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]

__all__ = ["AnyPath", "Fraction", "InputDir", "InputFile", "NonNegativeInt", "PositiveInt"]
