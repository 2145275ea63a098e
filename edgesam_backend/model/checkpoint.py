"""Loading EdgeSAM checkpoints: official layout, wrappers, and explicit errors.

Accepted files: a raw state_dict (the official ``edge_sam.pth`` / ``edge_sam_3x.pth``), or one wrapped
as ``{"model": state_dict}`` / ``{"state_dict": state_dict}`` (training checkpoints), optionally with
a ``module.`` prefix (DistributedDataParallel). Keys under :data:`OPTIONAL_PREFIXES` (extra heads such
as the region proposal module) may be present or absent. Anything else missing, unexpected or of
the wrong shape raises :class:`CheckpointError` naming the keys; nothing is loaded silently.

**Input size** (:data:`IMAGE_SIZE_KEY`): a checkpoint written by training (``edgesam finetune``) is
``{"model": state_dict, "image_size": S}``: ``S`` is the square input side the weights were trained
at (a plain int next to the state_dict). A bare state_dict, like the official files, means 1024.
:func:`checkpoint_image_size` reads it; ``load_edge_sam(..., image_size=None)`` builds the model for
it, which is the default: the runtime (transforms, predictors, export) follows the model's size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime.transforms import IMAGE_SIZE
from .edge_sam import EdgeSam, build_edge_sam

#: Prefixes of optional, non-official submodules (the region proposal head).
OPTIONAL_PREFIXES: tuple[str, ...] = ("rpn_head.",)
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")
#: Metadata entry next to the state_dict: the training input side (int; absent means 1024).
IMAGE_SIZE_KEY = "image_size"


class CheckpointError(ValueError):
    """A checkpoint file or object does not match EdgeSAM's state_dict layout."""


def _expected_layout() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in build_edge_sam().state_dict().items()}


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Return the state_dict inside ``obj`` (raw, ``{"model": ...}``, ``{"state_dict": ...}``),
    stripping a ``module.`` prefix. Raises :class:`CheckpointError` if there is none."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state_dict mapping")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            obj = inner
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise CheckpointError(
            f"no state_dict found: expected tensors keyed like 'image_encoder.*', or a dict with one of "
            f"{_WRAPPER_KEYS}; top-level keys are: {keys}"
        )
    sd = dict(obj)
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def checkpoint_image_size(obj: Any) -> int:
    """The input side a loaded checkpoint object was trained at: its :data:`IMAGE_SIZE_KEY` entry,
    else 1024 (a bare or official state_dict). Raises :class:`CheckpointError` on an invalid value."""
    size = obj.get(IMAGE_SIZE_KEY) if isinstance(obj, Mapping) else None
    if size is None or isinstance(size, torch.Tensor):  # a tensor is a state_dict entry, not metadata
        return IMAGE_SIZE
    if not isinstance(size, int) or isinstance(size, bool) or size < 64 or size % 16:
        raise CheckpointError(f"checkpoint {IMAGE_SIZE_KEY} must be a multiple of 16 >= 64, got {size!r}")
    return size


def with_metadata(sd: Mapping[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    """The object to save for a trained model: ``{"model": sd, "image_size": image_size}``."""
    return {"model": dict(sd), IMAGE_SIZE_KEY: int(image_size)}


def _fmt(keys: list[str], limit: int = 10) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def layout_problems(
    sd: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    ignore_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """What separates ``sd`` from the ``expected`` key → shape layout: missing keys, unexpected keys
    (except those under ``ignore_prefixes``) and shape mismatches, one phrase each (empty: it fits)."""
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not k.startswith(ignore_prefixes)]
    wrong = [
        f"{k} {tuple(sd[k].shape)} != {expected[k]}"
        for k in expected
        if k in sd and tuple(sd[k].shape) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_fmt(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_fmt(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches: {_fmt(wrong, 5)}")
    return problems


def check_state_dict(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]] | None = None
) -> None:
    """Raise :class:`CheckpointError` unless ``sd`` has exactly EdgeSAM's keys and shapes
    (plus optional-prefix keys)."""
    expected = expected if expected is not None else _expected_layout()
    problems = layout_problems(sd, expected, OPTIONAL_PREFIXES)
    if problems:
        hint = ""
        missing = any(k not in sd for k in expected)
        if missing and any(k.startswith("image_encoder.blocks.") or "patch_embed" in k for k in sd):
            hint = " (this looks like a SAM ViT or MobileSAM checkpoint, not EdgeSAM)"
        raise CheckpointError("not an EdgeSAM checkpoint" + hint + ": " + "; ".join(problems))


def check_checkpoint_obj(obj: Any) -> dict[str, torch.Tensor]:
    """Unwrap and validate a loaded checkpoint object; returns the state_dict."""
    sd = unwrap_state_dict(obj)
    check_state_dict(sd)
    return sd


def read_checkpoint_file(
    path: str | os.PathLike[str], what: str = "checkpoint", hint: str = ""
) -> dict[str, torch.Tensor]:
    """``torch.load`` (weights only, CPU) + unwrap; no layout check. Errors name the file
    (``what`` and ``hint`` tailor the not-found message)."""
    return read_checkpoint(path, what, hint)[0]


def read_checkpoint(
    path: str | os.PathLike[str], what: str = "checkpoint", hint: str = ""
) -> tuple[dict[str, torch.Tensor], int]:
    """:func:`read_checkpoint_file` and the file's training input side (:func:`checkpoint_image_size`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}{hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read {what} {path}: {exc}") from exc
    try:
        return unwrap_state_dict(obj), checkpoint_image_size(obj)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """:func:`read_checkpoint_file` + validation against EdgeSAM's official layout."""
    return _load_checked(path)[0]


def _load_checked(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], int]:
    sd, size = read_checkpoint(path)
    try:
        check_state_dict(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return sd, size


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> None:
    """Load ``sd`` into ``model`` with strict semantics for every official key.

    Optional-prefix keys (the region proposal head) load when both sides have them, and must then
    match exactly; present on one side only, they are skipped (an official checkpoint into a model
    with an RPN head, or the reverse).
    """
    own = model.state_dict()
    check_state_dict(sd, {k: tuple(v.shape) for k, v in own.items() if not k.startswith(OPTIONAL_PREFIXES)})
    own_opt = {k: tuple(v.shape) for k, v in own.items() if k.startswith(OPTIONAL_PREFIXES)}
    sd_opt = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(OPTIONAL_PREFIXES)}
    if own_opt and sd_opt and own_opt != sd_opt:
        missing = [k for k in own_opt if k not in sd_opt]
        unexpected = [k for k in sd_opt if k not in own_opt]
        wrong = [f"{k} {sd_opt[k]} != {v}" for k, v in own_opt.items() if k in sd_opt and sd_opt[k] != v]
        raise CheckpointError(
            "region proposal head weights do not match this model: "
            + "; ".join(
                p
                for p in (
                    f"{len(missing)} missing keys: {_fmt(missing)}" if missing else "",
                    f"{len(unexpected)} unexpected keys: {_fmt(unexpected)}" if unexpected else "",
                    f"{len(wrong)} shape mismatches: {_fmt(wrong, 5)}" if wrong else "",
                )
                if p
            )
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def load_edge_sam(
    checkpoint: str | os.PathLike[str] | Mapping[str, Any] | None,
    upsample_mode: str = "bicubic",
    with_rpn: bool | None = None,
    image_size: int | None = None,
) -> EdgeSam:
    """Build EdgeSAM and load ``checkpoint`` (a path, a loaded object, or ``None`` for random init).

    ``with_rpn=None`` builds the region proposal head exactly when the checkpoint has ``rpn_head.*``
    weights; ``True`` builds it regardless (untrained if the checkpoint lacks it). ``image_size``:
    the input frame to build for; ``None`` uses the checkpoint's own (:data:`IMAGE_SIZE_KEY`, 1024
    when absent).
    """
    if checkpoint is None:
        return build_edge_sam(upsample_mode, bool(with_rpn), image_size or IMAGE_SIZE)
    if isinstance(checkpoint, Mapping):
        sd, trained = check_checkpoint_obj(checkpoint), checkpoint_image_size(checkpoint)
    else:
        sd, trained = _load_checked(checkpoint)
    if with_rpn is None:
        with_rpn = any(k.startswith("rpn_head.") for k in sd)
    model = build_edge_sam(upsample_mode=upsample_mode, with_rpn=with_rpn, image_size=image_size or trained)
    load_into(model, sd)
    return model.eval()
