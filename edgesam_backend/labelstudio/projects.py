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

log = logging.getLogger("edgesam_backend.labelstudio")

MASK_CHOICES = ("auto", "single", "stability", "iou")
#: extra_params keys (from Label Studio's ML backend registration) that override settings per project.
EXTRA_PARAMS = {
    "mask_choice": str,
    "default_label": str,
    "points_per_side": int,
    "pred_iou_thresh": float,
    "stability_score_thresh": float,
    "box_nms_thresh": float,
    "min_mask_region_area": int,
    "max_regions": int,
    "use_proposals": bool,
    "strategy": str,
    "max_prompts": int,
}
STRATEGIES = ("grid", "coverage")
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
        typ = EXTRA_PARAMS.get(k)
        if typ is None:
            log.info("ignoring unknown extra_params key %r", k)
            continue
        if typ is bool:
            if not isinstance(v, bool):
                raise BadRequest(f"extra_params.{k} must be true or false, got {v!r}")
        elif typ is int:
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise BadRequest(f"extra_params.{k} must be a non-negative integer, got {v!r}")
        elif typ is float:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise BadRequest(f"extra_params.{k} must be a number in 0-1, got {v!r}")
        elif not isinstance(v, str):
            raise BadRequest(f"extra_params.{k} must be a string, got {v!r}")
        out[k] = v
    if "mask_choice" in out and out["mask_choice"] not in MASK_CHOICES:
        raise BadRequest(f"extra_params.mask_choice must be one of {', '.join(MASK_CHOICES)}")
    if "strategy" in out and out["strategy"] not in STRATEGIES:
        raise BadRequest(f"extra_params.strategy must be one of {', '.join(STRATEGIES)}")
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
