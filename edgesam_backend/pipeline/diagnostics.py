"""Pipeline errors that point at the YAML: ``file:line:col: key.path: message``, sorted by position.

:class:`YamlErrors` collects them; :func:`pydantic_errors` turns a :class:`~pydantic.ValidationError` into
them (unknown step kinds and keys get a "did you mean" hint from the keys allowed at that place);
:func:`schema_errors` adds what the JSON Schema rejects but pydantic would coerce.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..yamlconfig import ConfigError, StrictModel, mark, node_at
from .config import LocalExecutor, ModelConfig, RayExecutor, pipeline_json_schema, pipeline_model
from .registry import StepSpec

#: ``executor.type`` → its config model (for the keys suggested under ``executor``).
_EXECUTORS: dict[str, type[StrictModel]] = {"local": LocalExecutor, "ray": RayExecutor}


class YamlErrors:
    """Errors of one YAML file, each at the node of its pydantic-style location (deduplicated)."""

    def __init__(
        self,
        path: Path,
        root: yaml.Node | None,
        overrides: dict[tuple[Any, ...], str] | None = None,
        data: Any = None,
    ) -> None:
        self.path, self.root = path, root
        self.lines: list[tuple[int, int, str]] = []
        #: location set by ``--set`` → the argument (errors at or below it name the argument)
        self.overrides = dict(overrides or {})
        # the data after the overrides as a node tree: locates pydantic paths in what was validated
        self._data_root = yaml.compose(yaml.safe_dump(data)) if self.overrides else None

    def _override_at(self, loc: tuple[Any, ...]) -> tuple[str, list[Any]] | None:
        """The ``--set`` argument that set ``loc`` (or a parent of it), and ``loc`` as shown."""
        if not self.overrides:
            return None
        _, shown = node_at(self._data_root, loc)
        for target, text in self.overrides.items():
            if tuple(shown[: len(target)]) == target:
                return text, shown
        return None

    def where(self, loc: tuple[Any, ...]) -> str:
        """``file:line:col`` of the node at ``loc``."""
        return mark(self.path, node_at(self.root, loc)[0])[0]

    def add(self, loc: tuple[Any, ...], message: str, key_node: bool = False) -> None:
        """Record ``message`` at ``loc`` (at the key itself with ``key_node``), or at the ``--set``
        argument that wrote it."""
        hit = self._override_at(loc)
        if hit is not None:
            text, shown = hit
            entry = (0, 0, f"--set {text}: {'.'.join(map(str, shown))}: {message}")
            if entry not in self.lines:
                self.lines.append(entry)
            return
        node, shown = node_at(self.root, loc, key_node=key_node)
        where, line, col = mark(self.path, node)
        key = ".".join(map(str, shown)) or "<root>"
        entry = (line, col, f"{where}: {key}: {message}")
        if entry not in self.lines:
            self.lines.append(entry)

    def raise_if_any(self) -> None:
        """Raise one :class:`ConfigError` listing every error in file order."""
        if self.lines:
            msgs = [m for _, _, m in sorted(self.lines, key=lambda e: (e[0], e[1]))]
            raise ConfigError("invalid pipeline:\n  " + "\n  ".join(msgs))


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
        # pydantic's union tag (``("executor", "local", key)``) names the executor type
        tag = parent[1] if len(parent) > 1 else None
        model = _EXECUTORS.get(tag) if isinstance(tag, str) else None
        return list(model.model_fields) if model is not None else []
    return []


def pydantic_errors(exc: ValidationError, data: Any, errs: YamlErrors, reg: dict[str, StepSpec]) -> None:
    """Record every error of ``exc`` (raised validating ``data``) with the wording users see."""
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


def schema_errors(data: Any, errs: YamlErrors, reg: dict[str, StepSpec]) -> None:
    """Record what the JSON Schema of the registered steps rejects in ``data``."""
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


__all__ = ["YamlErrors", "pydantic_errors", "schema_errors"]
