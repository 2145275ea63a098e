"""Per-project state of the Label Studio backend: the label config seen by /setup and the validated
``extra_params`` overrides, in a bounded LRU keyed by project id."""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .errors import BadRequest
from .settings import EXTRA_PARAM_FIELDS, validate_extra_param

log = logging.getLogger("edgesam_backend.labelstudio")

#: extra_params keys (from Label Studio's ML backend registration) that override settings per project;
#: each has the type and limits of its ``EDGESAM_*`` twin (:data:`.settings.EXTRA_PARAM_FIELDS`).
EXTRA_PARAMS = tuple(EXTRA_PARAM_FIELDS)
MAX_PROJECTS = 1000


@dataclass
class ProjectState:
    """What /setup told us about one project: its label config XML and ``extra_params``."""

    schema: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def project_key(project: Any) -> str | None:
    """``"12.1712345678"`` (Label Studio's project uid) → ``"12"``."""
    if project is None:
        return None
    return str(project).split(".", 1)[0]


def option(state: ProjectState | None, name: str, default: Any) -> Any:
    """The project's ``extra_params[name]`` if set, else ``default`` (the server setting)."""
    if state is not None and name in state.extra:
        return state.extra[name]
    return default


def parse_extra(extra: Any) -> dict[str, Any]:
    """Validate ``extra_params`` (a dict or JSON text); unknown keys are ignored."""
    if extra in (None, "", {}):
        return {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra)
        except ValueError:
            raise BadRequest(f"extra_params is not valid JSON: {extra[:200]!r}") from None
    if not isinstance(extra, dict):
        raise BadRequest("extra_params must be a JSON object")
    out: dict[str, Any] = {}
    for k, v in extra.items():
        if k not in EXTRA_PARAM_FIELDS:
            log.info("ignoring unknown extra_params key %r", k)
            continue
        try:
            out[k] = validate_extra_param(k, v)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    return out


class Projects:
    """Thread-safe LRU of :class:`ProjectState` (at most ``capacity`` projects)."""

    def __init__(self, capacity: int = MAX_PROJECTS) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, ProjectState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str | None) -> ProjectState | None:
        if key is None:
            return None
        with self._lock:
            st = self._items.get(key)
            if st is not None:
                self._items.move_to_end(key)
            return st

    def remember(self, key: str, state: ProjectState) -> None:
        with self._lock:
            self._items[key] = state
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
