"""Read and update the ``metadata_props`` of an ONNX file (``edgesam.*`` keys: producer, upsample
mode, checkpoint hash, role, int8 settings and agreement)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from ..fileio import atomic_open


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The file's metadata as a dict (weights are not loaded)."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def update_metadata(path: str | os.PathLike[str], props: dict[str, str]) -> None:
    """Set ``props`` (existing keys are overwritten, others kept) and rewrite the file atomically."""
    m = onnx.load(str(path))
    merged = {p.key: p.value for p in m.metadata_props} | props
    del m.metadata_props[:]
    for k, v in merged.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    with atomic_open(Path(path)) as f:
        onnx.save(m, f)
