"""The step registry, filled from the ``edgesam_backend.steps`` entry-point group.

A package adds a step by declaring an entry point whose name is the step ``kind`` and whose object is the
step class (a subclass of one of :mod:`edgesam_backend.pipeline.base`'s step classes) with a ``Config``
attribute holding its pydantic config model::

    [project.entry-points."edgesam_backend.steps"]
    "acme.export_parquet" = "acme_steps.parquet:ParquetExport"

The object may instead be a zero-argument callable that calls :func:`register_step` itself, or a
:class:`StepSpec`. The config model must forbid unknown keys (subclass
:class:`~edgesam_backend.pipeline.base.StepConfig`); its ``kind`` field is added by the registry
(``kind: Literal["acme.export_parquet"]``) when the model does not declare it.

The built-in steps are declared the same way in this package's ``pyproject.toml``; when the installed
metadata lacks them (an editable install made before they were added), they are registered directly
from :data:`BUILTIN_STEPS`, the same table.
"""

from __future__ import annotations

import importlib
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, create_model

from .base import ROLES, Step, StepConfig

ENTRY_POINT_GROUP = "edgesam_backend.steps"

#: kind → "module:object" of every built-in step (mirrored in pyproject's entry points).
BUILTIN_STEPS: dict[str, str] = {
    "source.folder": "edgesam_backend.pipeline.steps.sources:FolderSource",
    "source.files": "edgesam_backend.pipeline.steps.sources:FilesSource",
    "source.coco": "edgesam_backend.pipeline.steps.sources:CocoSource",
    "source.labelstudio": "edgesam_backend.pipeline.steps.sources:LabelStudioSource",
    "prompt.grid": "edgesam_backend.pipeline.steps.prompts:GridPrompt",
    "prompt.proposals": "edgesam_backend.pipeline.steps.prompts:ProposalPrompt",
    "prompt.source_boxes": "edgesam_backend.pipeline.steps.prompts:SourceBoxesPrompt",
    "prompt.detections": "edgesam_backend.pipeline.steps.prompts:DetectionsPrompt",
    "segment": "edgesam_backend.pipeline.steps.segment:Segment",
    "refine": "edgesam_backend.pipeline.steps.refine:Refine",
    "export.coco": "edgesam_backend.pipeline.steps.exports.coco:CocoExport",
    "export.labelstudio": "edgesam_backend.pipeline.steps.exports.labelstudio:LabelStudioExport",
    "export.png": "edgesam_backend.pipeline.steps.exports.png:PngExport",
    "export.yolo": "edgesam_backend.pipeline.steps.exports.yolo:YoloExport",
    "export.preview": "edgesam_backend.pipeline.steps.exports.preview:PreviewExport",
}


class RegistryError(ValueError):
    """A step could not be registered (bad kind, config model or class)."""


@dataclass(frozen=True)
class StepSpec:
    """A registered step: its kind, config model (with a ``kind`` literal), class and role."""

    kind: str
    config_model: type[BaseModel]
    implementation: type[Step]
    origin: str = "builtin"

    @property
    def role(self) -> str:
        return self.implementation.role


_lock = threading.RLock()
_registry: dict[str, StepSpec] = {}
_loaded = False


def _with_kind(kind: str, config_model: type[BaseModel]) -> type[BaseModel]:
    field = config_model.model_fields.get("kind")
    if field is not None:
        allowed = getattr(field.annotation, "__args__", ())
        if tuple(allowed) != (kind,):
            raise RegistryError(
                f"step {kind!r}: {config_model.__name__}.kind must be Literal[{kind!r}], "
                f"got {field.annotation}"
            )
        return config_model
    extra = config_model.model_config.get("extra")
    if extra != "forbid":
        raise RegistryError(
            f"step {kind!r}: {config_model.__name__} must forbid unknown keys "
            "(subclass edgesam_backend.pipeline.base.StepConfig or set extra='forbid')"
        )
    name = "".join(p.capitalize() for p in kind.replace("-", "_").replace(".", "_").split("_")) + "Step"
    return create_model(
        name,
        __base__=config_model,
        __module__=config_model.__module__,
        kind=(Literal[kind], ...),  # type: ignore[valid-type]
    )


def register_step(
    kind: str, config_model: type[BaseModel], implementation: type[Step], *, origin: str = "api"
) -> StepSpec:
    """Register ``implementation`` (a step class) under ``kind`` with ``config_model``.

    Re-registering the same class under the same kind is a no-op; another class under a taken kind is
    an error.
    """
    if not isinstance(kind, str) or not kind or any(c.isspace() for c in kind):
        raise RegistryError(f"a step kind must be a non-empty string without spaces, got {kind!r}")
    if not (isinstance(implementation, type) and issubclass(implementation, Step)):
        raise RegistryError(f"step {kind!r}: implementation must be a Step subclass, got {implementation!r}")
    if implementation.role not in ROLES:
        raise RegistryError(f"step {kind!r}: role must be one of {ROLES}, got {implementation.role!r}")
    if not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
        raise RegistryError(f"step {kind!r}: config model must be a pydantic model, got {config_model!r}")
    with _lock:
        old = _registry.get(kind)
        if old is not None:
            if old.implementation is implementation:
                return old
            raise RegistryError(
                f"step kind {kind!r} is already registered by {old.implementation.__module__}."
                f"{old.implementation.__qualname__} ({old.origin})"
            )
        spec = StepSpec(kind, _with_kind(kind, config_model), implementation, origin)
        _registry[kind] = spec
        return spec


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _register_object(kind: str, obj: Any, origin: str) -> None:
    if isinstance(obj, StepSpec):
        register_step(kind, obj.config_model, obj.implementation, origin=origin)
    elif isinstance(obj, type) and issubclass(obj, Step):
        config = getattr(obj, "Config", None)
        if config is None:
            raise RegistryError(
                f"step {kind!r}: {obj.__qualname__} has no Config attribute (its config model)"
            )
        register_step(kind, config, obj, origin=origin)
    elif callable(obj):
        obj()
        if kind not in _registry:
            raise RegistryError(f"entry point {kind!r} ran but did not register a step named {kind!r}")
    else:
        raise RegistryError(f"entry point {kind!r} is neither a step class nor a callable: {obj!r}")


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_registry(*, builtins_only: bool = False) -> dict[str, StepSpec]:
    """All registered steps (loading entry points once). ``builtins_only`` returns just the built-ins."""
    global _loaded
    with _lock:
        if not _loaded:
            for ep in _entry_points():
                origin = (
                    "builtin"
                    if ep.name in BUILTIN_STEPS and ep.value == BUILTIN_STEPS[ep.name]
                    else (f"entry point {ep.value}")
                )
                try:
                    _register_object(ep.name, ep.load(), origin)
                except Exception as exc:  # a broken plugin must not take the built-ins down
                    warnings.warn(
                        f"edgesam: cannot load pipeline step {ep.name!r} from {ep.value}: {exc}",
                        stacklevel=2,
                    )
            for kind, target in BUILTIN_STEPS.items():  # fallback: metadata without the entry points
                if kind not in _registry:
                    _register_object(kind, _import(target), "builtin")
            _loaded = True
        if builtins_only:
            return {k: v for k, v in _registry.items() if v.origin == "builtin"}
        return dict(_registry)


def get_step(kind: str) -> StepSpec:
    reg = load_registry()
    if kind not in reg:
        raise RegistryError(f"unknown step kind {kind!r}; known: {', '.join(sorted(reg))}")
    return reg[kind]


def reset_registry() -> None:
    """Forget everything (tests)."""
    global _loaded
    with _lock:
        _registry.clear()
        _loaded = False


__all__ = [
    "BUILTIN_STEPS",
    "ENTRY_POINT_GROUP",
    "RegistryError",
    "StepConfig",
    "StepSpec",
    "get_step",
    "load_registry",
    "register_step",
    "reset_registry",
]
