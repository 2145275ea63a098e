"""YAML → pydantic with errors that point at the YAML line and column.

``load_yaml_model(path, Model)`` parses with PyYAML, expands ``${VAR}`` / ``${VAR:-default}`` in
scalars, validates with pydantic, and raises :class:`ConfigError` whose message lists each problem
as ``file:line:col: key.path: message``. Every config (pipelines, train-rpn, distillation) shares
these rules: ``${VAR:-x}`` uses ``x`` when VAR is unset or empty (shell semantics); an unquoted
scalar that is exactly one ``${...}`` takes the YAML type of its value (``32`` is an int, ``null`` is
None), a quoted one stays a string; an unset VAR without a default is an error at its line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A YAML config could not be read or validated; the message names file, line and key."""


def _locate(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The deepest YAML node along the pydantic error location ``loc``.

    Parts that are not keys of the current mapping but are followed by more parts are union tags that
    pydantic inserts (``('steps', 1, 'prompt.grid', 'points_per_side')``): they are skipped.
    """
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if nxt is None and i + 1 < len(loc):  # a union tag, not a key
                continue
            if nxt is None:  # a missing key: point at the mapping
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node


def locate(path: str | os.PathLike[str], root: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    """``file:line:col`` of the YAML node at pydantic error location ``loc`` (``file`` alone if unknown)."""
    node = _locate(root, loc)
    mark = node.start_mark if node is not None else None
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)


def compose(text: str, path: Path) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None


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


def load_yaml_model(path: str | os.PathLike[str], model: type[M]) -> M:
    """Read, expand and validate ``path`` as ``model``; see module docstring for the error format."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}") from None
    root = compose(text, p)
    expand_env_nodes(root, p)
    data = construct(root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}:1:1: expected a mapping of keys, got {type(data).__name__}")
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
