"""``--set key.path=value`` overrides, applied to a pipeline's parsed YAML before validation.

Keys are dotted paths with list indices (``steps[1].points_per_side=16``) or step kinds
(``steps[prompt.grid].points_per_side=16``, the first step of that kind); the value is parsed as YAML
(``executor={type: ray, num_workers: 3}``).
"""

from __future__ import annotations

import re
from typing import Any

from ..yamlconfig import ConfigError, parse_value

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
    value = parse_value(raw, f"--set {text!r}") if raw.strip() else ""
    return parts, value


def apply_override(data: dict[str, Any], text: str) -> tuple[Any, ...]:
    """Apply one ``--set`` override to the raw (expanded) data; returns the location it set, as a
    pydantic-style path with list positions resolved (``("steps", 1, "points_per_side")``), so that
    errors in the value name the ``--set`` argument instead of a YAML line."""
    parts, value = parse_override(text)
    cur: Any = data
    loc: list[Any] = []
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
            loc.append(idx % len(cur))
            if last:
                cur[idx] = value
            else:
                cur = cur[idx]
        else:
            if not isinstance(cur, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(parts[:i]) or '<root>'} is not a mapping")
            loc.append(part)
            if last:
                cur[part] = value
            else:
                cur = cur.setdefault(part, {})
    return tuple(loc)


__all__ = ["apply_override", "parse_override"]
