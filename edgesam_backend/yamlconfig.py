"""YAML → pydantic with errors that point at the YAML line and column.

``load_yaml_model(path, Model)`` parses with PyYAML, expands ``${VAR}`` / ``${VAR:-default}`` in
scalars, validates with pydantic, and raises :class:`ConfigError` whose message lists each problem
as ``file:line:col: key.path: message``. Every config (pipelines, train-rpn, distillation) shares
these rules: ``${VAR:-x}`` uses ``x`` when VAR is unset or empty (shell semantics); an unquoted
scalar that is exactly one ``${...}`` takes the YAML type of its value (``32`` is an int, ``null`` is
None), a quoted one stays a string; an unset VAR without a default is an error at its line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class StrictModel(BaseModel):
    """Base of every config model read from YAML: unknown keys are errors (``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A YAML config could not be read or validated; the message names file, line and key."""


def node_at(
    root: yaml.Node | None, loc: tuple[Any, ...], *, key_node: bool = False
) -> tuple[yaml.Node | None, list[Any]]:
    """The deepest YAML node along the pydantic error location ``loc``, and ``loc`` as shown to users.

    Parts that are not keys of the current mapping but are followed by more parts are union tags that
    pydantic inserts (``('steps', 1, 'prompt.grid', 'points_per_side')``): they are skipped and left out
    of the shown location. A missing last key points at its mapping; ``key_node`` gives the node of the
    last key instead of its value (for "unknown key" errors).
    """
    node, shown = root, []
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if pair is None:
                if i + 1 < len(loc):  # a union tag, not a key
                    continue
                shown.append(part)  # a missing key: point at the mapping
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


def mark(path: str | os.PathLike[str], node: yaml.Node | None) -> tuple[str, int, int]:
    """(``file:line:col``, line, col) of ``node`` (``file`` alone and ``0, 0`` when unknown)."""
    m = node.start_mark if node is not None else None
    if m is None:
        return str(path), 0, 0
    return f"{path}:{m.line + 1}:{m.column + 1}", m.line + 1, m.column + 1


def locate(path: str | os.PathLike[str], root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """``file:line:col`` of the YAML node at pydantic error location ``loc`` (``file`` alone if unknown)."""
    return mark(path, node_at(root, loc)[0])[0]


def compose(text: str, path: str | os.PathLike[str]) -> yaml.Node | None:
    """Parse ``text`` to a node tree; invalid YAML and duplicate keys are :class:`ConfigError` s."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    check_duplicate_keys(root, path)
    return root


def check_duplicate_keys(root: yaml.Node | None, path: str | os.PathLike[str]) -> None:
    """A key given twice in one mapping is an error at the second one (PyYAML keeps the last silently).

    Iterative (no recursion limit); aliases are visited once."""
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value != "<<":
                    ident = (k.tag, k.value)
                    if ident in first:
                        where = mark(path, k)[0]
                        line = first[ident].start_mark.line + 1
                        raise ConfigError(f"{where}: duplicate key {k.value!r} (first given at line {line})")
                    first[ident] = k
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def parse_value(text: str, where: str = "<value>") -> Any:
    """One YAML value (a ``--set KEY=VALUE`` right-hand side) with the same rules as config files."""
    return construct(compose(text, where))


def expand_env_nodes(node: yaml.Node | None, path: Path) -> None:
    """Expand ``${VAR}`` in scalar values in place (see module docs for the typing rule)."""
    if node is None:
        return
    if isinstance(node, yaml.MappingNode):
        for _, v in node.value:
            expand_env_nodes(v, path)
        return
    if isinstance(node, yaml.SequenceNode):
        for v in node.value:
            expand_env_nodes(v, path)
        return
    if not isinstance(node, yaml.ScalarNode) or "${" not in node.value:
        return

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if default is not None and not value:  # shell semantics: unset or empty → default
            return default
        if value is not None:
            return value
        mark = node.start_mark
        raise ConfigError(
            f"{path}:{mark.line + 1}:{mark.column + 1}: environment variable {name} is not set "
            f"(use ${{{name}:-default}})"
        )

    whole = _ENV.fullmatch(node.value) is not None
    node.value = _ENV.sub(sub, node.value)
    if node.style is None and whole:  # plain scalar: type the value as YAML would
        node.tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, node.value, (True, False))


def construct(root: yaml.Node | None) -> Any:
    if root is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(root)
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str], expected: str = "") -> tuple[yaml.Node | None, dict[str, Any]]:
    """Read ``path``, expand ``${VAR}`` and return (the YAML node tree, the mapping it holds).

    An empty file is ``{}``; anything but a mapping is a :class:`ConfigError` (``expected`` names the
    usual keys in that message, e.g. ``"model, output_dir, steps, ..."``).
    """
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
        keys = f" ({expected})" if expected else ""
        raise ConfigError(f"{p}:1:1: expected a mapping of keys{keys}, got {type(data).__name__}")
    return root, data


def schema_text(schema: dict[str, Any]) -> str:
    """The committed form of a JSON Schema file: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def load_yaml_model(path: str | os.PathLike[str], model: type[M]) -> M:
    """Read, expand and validate ``path`` as ``model``; see module docstring for the error format."""
    p = Path(path)
    root, data = read_yaml(p)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = locate(p, root, tuple(err["loc"]))
            key = ".".join(map(str, err["loc"])) or "<root>"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{where}: {key}: {msg}")
        raise ConfigError("invalid config:\n  " + "\n  ".join(lines)) from None
