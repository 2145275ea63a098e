"""The pipeline language: pydantic models (the source of truth), the JSON Schema, and the YAML loader.

``load_pipeline(path)`` reads a YAML file and reports every problem as ``file:line:col: key.path:
message``:

1. YAML syntax;
2. ``${VAR}`` / ``${VAR:-default}`` expansion in string scalars (the default applies when the variable is
   unset or empty, as in the shell); a *plain* (unquoted) scalar that is exactly one ``${...}`` takes the
   YAML type of its value (``points_per_side: ${PPS:-32}`` is an integer, ``${DIR:-}`` is null); quote it
   to keep a string;
3. ``--set key.path=value`` overrides (``steps[1].points_per_side=16``, ``steps[prompt.grid]...``);
4. pydantic validation of the model built from the step registry (steps are a union discriminated on
   ``kind``; unknown keys are errors; input paths resolve against the YAML's directory and must exist);
5. the step order (one source first, one prompt step, one segment, refine steps, exports last) and
   cross-step checks, each error at its step's line;
6. JSON Schema validation (jsonschema, the schema ``edgesam schema`` writes), which also rejects what
   pydantic would coerce (``points_per_side: "32"``).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..runtime.model_files import DECODER_FILE, ENCODER_FILE
from ..yamlconfig import ConfigError, compose, construct, expand_env_nodes
from .base import ROLES
from .registry import StepSpec, load_registry
from .types import AnyPath, PositiveInt

SCHEMA_ID = "https://github.com/edgesam-backend/schemas/pipeline.schema.json"
SCHEMA_FILE = "pipeline.schema.json"
_ROLE_RANK = {"source": 0, "prompt": 1, "segment": 2, "refine": 3, "export": 4}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- model and executors ---------------------------------------------------------------------------


class ModelConfig(_Strict):
    """Which EdgeSAM to run (onnxruntime). ``checkpoint``: a model name (``edge_sam``, ``edge_sam_3x``)
    or a ``.pth`` path (ONNX exported once into ``onnx_dir`` or the cache; a checkpoint with region
    proposal weights gives an encoder with proposals); or only ``onnx_dir`` with ``encoder.onnx`` +
    ``decoder.onnx``. ``threads``: onnxruntime intra-op threads per model (default: the executor's
    share of the CPUs). ``int8``: use ``encoder.int8.onnx`` from the same directory. ``device``:
    onnxruntime execution providers (``runtime/providers.py``)."""

    checkpoint: str | None = Field(None, min_length=1, description="model name or checkpoint path")
    onnx_dir: AnyPath | None = Field(None, description="directory with encoder.onnx and decoder.onnx")
    threads: PositiveInt | None = Field(None, description="onnxruntime intra-op threads per model")
    int8: bool = Field(False, description="use encoder.int8.onnx (written by `edgesam export --int8`)")
    device: str = Field(
        "cpu", description="onnxruntime device: cpu, cuda[:N], tensorrt[:N], openvino, coreml or auto"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        from ..runtime.providers import DeviceError, normalise_device

        try:
            return normalise_device(v)
        except DeviceError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        from ..weights import MODELS

        looks_like_path = "/" in v or os.sep in v or Path(v).suffix in (".pth", ".pt", ".bin", ".ckpt")
        if v in MODELS or not looks_like_path:
            if v not in MODELS:
                raise ValueError(
                    f"unknown model name {v!r} (known: {', '.join(MODELS)}; or give a .pth path)"
                )
            return v
        ctx = info.context or {}
        p = Path(v).expanduser()
        if ctx.get("base_dir") is not None and not p.is_absolute():
            p = Path(ctx["base_dir"]) / p
        if ctx.get("base_dir") is not None and ctx.get("check_paths", True) and not p.is_file():
            raise ValueError(f"checkpoint file not found: {p}")
        return str(p)

    @field_validator("onnx_dir")
    @classmethod
    def _onnx_files(cls, v: str | None, info: ValidationInfo) -> str | None:
        ctx = info.context or {}
        check = ctx.get("base_dir") is not None and ctx.get("check_paths", True)
        if v is not None and check and info.data.get("checkpoint") is None:
            missing = [n for n in (ENCODER_FILE, DECODER_FILE) if not (Path(v) / n).is_file()]
            if missing:
                raise ValueError(f"{v} lacks {', '.join(missing)} (write them with `edgesam export`)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.checkpoint is None and self.onnx_dir is None:
            raise ValueError("give model.checkpoint (name or path) and/or model.onnx_dir")
        return self


class LocalExecutor(_Strict):
    """Threads in this process: per worker one model, an encoder thread and a mask thread (so image
    decoding, encoding and mask decoding overlap); ``prefetch`` images are read ahead."""

    type: Literal["local"] = "local"
    workers: PositiveInt = Field(1, description="models (each with its own onnxruntime sessions)")
    prefetch: PositiveInt = Field(4, description="images read and decoded ahead of the models")


class RayExecutor(_Strict):
    """Ray Data: read tasks, an actor pool holding the ONNX sessions (``num_workers`` actors), results
    written by the actors. ``address``: an existing cluster (``auto``, ``ray://host:10001``); unset starts
    a local Ray with ``num_cpus`` CPUs (default: all). ``cpus_per_worker``: CPUs each actor reserves
    (fractions are fine; onnxruntime gets ``max(1, floor(cpus_per_worker))`` threads unless
    ``model.threads`` says otherwise); default ``(cluster CPUs - 1) / num_workers``. The actors may never
    reserve every CPU: Ray Data's read tasks would wait forever (the run refuses to start)."""

    type: Literal["ray"]
    address: str | None = Field(None, description="Ray cluster address; unset: start a local Ray")
    num_workers: PositiveInt = Field(2, description="actors, each holding one model")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs reserved per actor (fractional ok)")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a local Ray started by the run")


ExecutorConfig = Annotated[Union[LocalExecutor, RayExecutor], Field(discriminator="type")]  # noqa: UP007


# --- the pipeline ----------------------------------------------------------------------------------


class PipelineBase(_Strict):
    """Fields common to every pipeline; ``steps`` is added from the registry (see :func:`pipeline_model`)."""

    version: Literal[1] = Field(1, description="pipeline language version")
    name: str | None = Field(None, description="free text shown in the summary and the preview")
    model: ModelConfig
    executor: ExecutorConfig = Field(default_factory=LocalExecutor)
    output_dir: AnyPath = Field(description="results, store and exports (relative to the YAML file)")
    max_errors: int | None = Field(
        10, ge=0, description="failed images tolerated before the run stops (null: no limit)"
    )

    _source: str = PrivateAttr("")
    _where: dict[int, str] = PrivateAttr(default_factory=dict)

    @property
    def source_path(self) -> str:
        """The YAML file this pipeline came from ("" when built in code)."""
        return self._source

    def step_where(self, index: int) -> str:
        """``file:line:col`` of step ``index`` in the YAML ("" when unknown)."""
        return self._where.get(index, "")


def _step_union(specs: list[StepSpec]) -> Any:
    models = tuple(s.config_model for s in specs)
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007


@lru_cache(maxsize=8)
def _pipeline_model(kinds: tuple[str, ...], builtins_only: bool) -> type[PipelineBase]:
    reg = load_registry(builtins_only=builtins_only)
    specs = [reg[k] for k in kinds]
    step = _step_union(specs)
    return create_model(
        "Pipeline",
        __base__=PipelineBase,
        __module__=__name__,
        steps=(list[step], Field(min_length=1, description="source, prompt, segment, refine..., exports")),
    )


def pipeline_model(*, builtins_only: bool = False) -> type[PipelineBase]:
    """The ``Pipeline`` pydantic model for the registered steps (cached)."""
    reg = load_registry(builtins_only=builtins_only)
    return _pipeline_model(tuple(sorted(reg)), builtins_only)


def pipeline_json_schema(*, builtins_only: bool = True) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the pipeline language; ``edgesam schema`` writes it."""
    schema = pipeline_model(builtins_only=builtins_only).model_json_schema()
    schema["title"] = "EdgeSAM pipeline"
    schema["description"] = (
        "A bulk segmentation job for `edgesam run`. Generated from the pydantic models by `edgesam schema`."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def schema_text(*, builtins_only: bool = True) -> str:
    return json.dumps(pipeline_json_schema(builtins_only=builtins_only), indent=2, sort_keys=True) + "\n"


# --- loading ---------------------------------------------------------------------------------------


def _walk(
    root: yaml.Node | None, loc: tuple[Any, ...], key_node: bool = False
) -> tuple[yaml.Node | None, list[Any]]:
    """The YAML node at a validation location (the key's node for ``key_node``) and the location without
    pydantic's union tags."""
    node, shown = root, []
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if pair is None:
                if i + 1 < len(loc):
                    continue  # a union tag inserted by pydantic
                shown.append(part)
                break
            node = pair[0] if key_node and i + 1 == len(loc) else pair[1]
            shown.append(part)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            shown.append(part)
        else:
            shown.extend(p for p in loc[i:] if not isinstance(p, str) or "[" not in p)
            break
    return node, shown


class _Errors:
    def __init__(self, path: Path, root: yaml.Node | None) -> None:
        self.path, self.root = path, root
        self.lines: list[tuple[int, int, str]] = []

    def where(self, loc: tuple[Any, ...]) -> str:
        node, _ = _walk(self.root, loc)
        mark = node.start_mark if node is not None else None
        return f"{self.path}:{mark.line + 1}:{mark.column + 1}" if mark else str(self.path)

    def add(self, loc: tuple[Any, ...], message: str, key_node: bool = False) -> None:
        node, shown = _walk(self.root, loc, key_node)
        mark = node.start_mark if node is not None else None
        key = ".".join(map(str, shown)) or "<root>"
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        where = f"{self.path}:{line}:{col}" if mark else str(self.path)
        entry = (line, col, f"{where}: {key}: {message}")
        if entry not in self.lines:
            self.lines.append(entry)

    def raise_if_any(self) -> None:
        if self.lines:
            msgs = [m for _, _, m in sorted(self.lines, key=lambda e: (e[0], e[1]))]
            raise ConfigError("invalid pipeline:\n  " + "\n  ".join(msgs))


_SET_TOKEN = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b[1].c=value`` → (``["a", "b", "[1]", "c"]``, parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. steps[1].points_per_side=16)")
    parts: list[str] = []
    pos = 0
    key = key.strip()
    while pos < len(key):
        if key[pos] == ".":
            pos += 1
            continue
        m = _SET_TOKEN.match(key, pos)
        if m is None:
            raise ConfigError(f"--set {text!r}: cannot parse the key {key!r}")
        parts.append(m.group(1) if m.group(1) is not None else f"[{m.group(2)}]")
        pos = m.end()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: invalid YAML value: {exc}") from None
    return parts, value


def apply_override(data: dict[str, Any], text: str) -> None:
    """Apply one ``--set`` override to the raw (expanded) data."""
    parts, value = parse_override(text)
    cur: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part.startswith("["):
            inner = part[1:-1]
            if not isinstance(cur, list):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:i]) or '<root>'} is not a list")
            if inner.lstrip("-").isdigit():
                idx = int(inner)
                if not -len(cur) <= idx < len(cur):
                    raise ConfigError(f"--set {text!r}: index {idx} out of range ({len(cur)} items)")
            else:
                idx = next(
                    (j for j, s in enumerate(cur) if isinstance(s, dict) and s.get("kind") == inner), -1
                )
                if idx < 0:
                    raise ConfigError(f"--set {text!r}: no step of kind {inner!r}")
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:i]) or '<root>'} is not a mapping")
            if last:
                cur[part] = value
            else:
                cur = cur.setdefault(part, {})


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known_keys(data: Any, loc: tuple[Any, ...], reg: dict[str, StepSpec]) -> list[str]:
    """Allowed keys at the mapping that holds an unknown key (for "did you mean")."""
    parent = loc[:-1]
    if not parent:
        return list(pipeline_model().model_fields)
    if parent[0] == "steps" and len(parent) >= 2 and isinstance(parent[1], int):
        try:
            kind = data["steps"][parent[1]].get("kind")
        except (KeyError, IndexError, TypeError, AttributeError):
            return []
        if kind in reg and len([p for p in parent[2:] if p != kind]) == 0:
            return [k for k in reg[kind].config_model.model_fields if k != "kind"]
        return []
    if parent == ("model",):
        return list(ModelConfig.model_fields)
    if parent[0] == "executor":
        return list(RayExecutor.model_fields)
    return []


def _pydantic_errors(exc: ValidationError, data: Any, errs: _Errors, reg: dict[str, StepSpec]) -> None:
    kinds = sorted(reg)
    for err in exc.errors():
        loc = tuple(err["loc"])
        typ = err["type"]
        if typ == "union_tag_invalid":
            tag = str(err.get("ctx", {}).get("tag", ""))
            disc = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
            if disc == "kind":
                errs.add(
                    (*loc, "kind"),
                    f"unknown step kind {tag!r}{_suggest(tag, kinds)}; known: {', '.join(kinds)}",
                )
            else:
                errs.add((*loc, disc), err["msg"])
        elif typ == "union_tag_not_found":
            disc = str(err.get("ctx", {}).get("discriminator", "")).strip("'")
            if disc == "kind":
                errs.add(loc, f"a step needs a 'kind' (one of: {', '.join(kinds)})")
            else:
                errs.add(loc, f"missing required key {disc!r}")
        elif typ == "extra_forbidden":
            errs.add(
                loc,
                f"unknown key {loc[-1]!r}{_suggest(str(loc[-1]), _known_keys(data, loc, reg))}",
                key_node=True,
            )
        elif typ == "missing":
            errs.add(loc, f"missing required key {loc[-1]!r}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            errs.add(loc, msg)


def _check_structure(pipe: PipelineBase, reg: dict[str, StepSpec], errs: _Errors) -> None:
    """Step order and cross-step checks (each error at its step)."""
    steps = pipe.steps  # type: ignore[attr-defined]
    roles = [reg[s.kind].role for s in steps]
    counts = {r: roles.count(r) for r in ROLES}
    sources = [i for i, r in enumerate(roles) if r == "source"]
    if not sources:
        errs.add(("steps", 0, "kind"), f"the first step must be a source (source.*), got {steps[0].kind!r}")
    elif sources[0] != 0:
        errs.add(("steps", sources[0], "kind"), "the source step must be the first step")
    for i in sources[1:]:
        errs.add(("steps", i, "kind"), "only one source step is allowed")
    seen_prompt = seen_segment = False
    for i, (step, role) in enumerate(zip(steps, roles, strict=True)):
        if role == "prompt":
            if seen_prompt:
                errs.add(("steps", i, "kind"), "at most one prompt step is allowed")
            seen_prompt = True
        if role == "segment":
            if seen_segment:
                errs.add(("steps", i, "kind"), "only one segment step is allowed")
            if not seen_prompt:
                errs.add(("steps", i, "kind"), "segment needs a prompt step (prompt.*) before it")
            seen_segment = True
        if (
            i > 0
            and _ROLE_RANK[role] < _ROLE_RANK[roles[i - 1]]
            and role != "source"
            and roles[i - 1] != "source"
        ):
            errs.add(
                ("steps", i, "kind"),
                f"{step.kind} ({role}) cannot follow {steps[i - 1].kind} ({roles[i - 1]}): the order is "
                "source, prompt, segment, refine..., exports",
            )
        if role == "refine" and not seen_segment:
            errs.add(("steps", i, "kind"), "refine steps come after the segment step")
    if counts["prompt"] and not counts["segment"]:
        i = roles.index("prompt")
        errs.add(("steps", i, "kind"), "a prompt step needs a segment step after it")
    if not counts["prompt"]:
        errs.add(("steps",), "a pipeline needs a prompt step (prompt.grid, prompt.source_boxes, ...)")
    if not counts["export"]:
        errs.add(("steps",), "a pipeline needs at least one export step (export.*)")
    ex = pipe.executor
    if ex.type == "ray" and not ex.address:  # a local Ray: its CPUs are known now
        from .base import PipelineError
        from .ray_executor import cpu_budget

        try:
            cpu_budget(ex.num_workers, ex.cpus_per_worker, float(ex.num_cpus or os.cpu_count() or 1))
        except PipelineError as exc:
            field = "cpus_per_worker" if ex.cpus_per_worker is not None else "num_workers"
            errs.add(("executor", field), str(exc).removeprefix("executor (ray): "))
    prompt_mode = next(
        (reg[s.kind].implementation.mode for s, r in zip(steps, roles, strict=True) if r == "prompt"),
        "prompts",
    )
    info = {"prompt_mode": prompt_mode, "roles": roles, "kinds": [s.kind for s in steps]}
    for i, step in enumerate(steps):
        check = getattr(reg[step.kind].implementation, "check_config", None)
        if check is None:
            continue
        for sub, msg in check(step, info):
            errs.add(("steps", i, *sub), msg)


def _schema_errors(data: Any, errs: _Errors, reg: dict[str, StepSpec]) -> None:
    import jsonschema

    schema = pipeline_json_schema(builtins_only=False)
    validator = jsonschema.Draft202012Validator(schema)
    defs = schema.get("$defs", {})
    by_kind = {}
    for spec in reg.values():
        title = spec.config_model.__name__
        if title in defs:
            by_kind[spec.kind] = {**defs[title], "$defs": defs}

    def report(error: Any, prefix: tuple[Any, ...] = ()) -> None:
        loc = (*prefix, *error.absolute_path)
        inst = error.instance
        if error.validator in ("oneOf", "anyOf") and isinstance(inst, dict) and inst.get("kind") in by_kind:
            sub = jsonschema.Draft202012Validator(by_kind[inst["kind"]])
            for e in sub.iter_errors(inst):
                report(e, loc)
            return
        if error.validator == "additionalProperties":
            extra = [k for k in inst if k not in error.schema.get("properties", {})]
            for k in extra:
                errs.add((*loc, k), f"unknown key {k!r} (JSON Schema)", key_node=True)
            return
        errs.add(loc, f"{error.message} (JSON Schema)")

    for error in validator.iter_errors(data):
        report(error)


def load_pipeline(
    path: str | os.PathLike[str],
    overrides: list[str] | tuple[str, ...] = (),
    *,
    check_paths: bool = True,
) -> PipelineBase:
    """Read, expand, override and validate a pipeline YAML (see the module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    root = compose(text, p)
    expand_env_nodes(root, p)
    data = construct(root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{p}:1:1: expected a mapping of keys (model, output_dir, steps, ...), got {type(data).__name__}"
        )
    for o in overrides:
        apply_override(data, o)
    reg = load_registry()
    model = pipeline_model()
    errs = _Errors(p, root)
    base_dir = p.resolve().parent
    try:
        pipe = model.model_validate(data, context={"base_dir": base_dir, "check_paths": check_paths})
    except ValidationError as exc:
        _pydantic_errors(exc, data, errs, reg)
        errs.raise_if_any()
        raise  # pragma: no cover - every error is reported above
    _check_structure(pipe, reg, errs)
    errs.raise_if_any()
    _schema_errors(data, errs, reg)
    errs.raise_if_any()
    pipe._source = str(p)
    pipe._where = {i: errs.where(("steps", i)) for i in range(len(pipe.steps))}  # type: ignore[attr-defined]
    return pipe


def pipeline_from_dict(
    data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None, check_paths: bool = False
) -> PipelineBase:
    """Validate an already-parsed pipeline (workers, tests); no YAML locations in errors."""
    ctx = {"base_dir": Path(base_dir), "check_paths": check_paths} if base_dir is not None else None
    return pipeline_model().model_validate(data, context=ctx)


__all__ = [
    "SCHEMA_FILE",
    "LocalExecutor",
    "ModelConfig",
    "PipelineBase",
    "RayExecutor",
    "apply_override",
    "load_pipeline",
    "pipeline_from_dict",
    "pipeline_json_schema",
    "pipeline_model",
    "schema_text",
]
