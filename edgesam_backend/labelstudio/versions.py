"""Model versions the backend can serve: the base model and the ones fine-tuned on a project.

A fit (:mod:`.fit`) writes ``TRAIN_DIR/versions/<model_version>/`` (``encoder.onnx``, ``decoder.onnx``,
the ``.pth`` it was exported from, ``fit.json`` with its metrics) and then makes it the active version.
``TRAIN_DIR/versions.json`` lists them and names the active one, so a restart serves what was served
before. Which version serves, first match wins:

1. ``EDGESAM_SERVE_VERSION`` (``base`` or a listed version): a pin, e.g. to roll back after a restart;
2. ``extra_params.model_version`` of a project's ``/setup`` (``base`` or a listed version): switches the
   backend at once (roll back from Label Studio's model settings);
3. the active version of ``versions.json`` (the last fit that passed validation);
4. the base model (``EDGESAM_CHECKPOINT`` / ``EDGESAM_ONNX_DIR``).

Torch-free: versions are ONNX directories; the registry file is replaced atomically.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

BASE = "base"
REGISTRY_FILE = "versions.json"


class VersionError(ValueError):
    """An unknown version was asked for (the message lists the known ones)."""


@dataclass
class FitVersion:
    """One fine-tuned version.

    Attributes:
        version: its ``model_version`` (``edgesam-<digest[:12]>`` of its ONNX files).
        onnx_dir: directory with ``encoder.onnx`` + ``decoder.onnx``.
        checkpoint: the ``.pth`` it was exported from (the next fit starts from it).
        parent: the version it was fine-tuned from.
        project: Label Studio project id whose annotations it learned from.
        created: UNIX time.
        metrics: training and validation figures (see :mod:`.fit`).
    """

    version: str
    onnx_dir: str
    checkpoint: str
    parent: str
    project: int | None
    created: float = field(default_factory=time.time)
    metrics: dict[str, Any] = field(default_factory=dict)


class VersionRegistry:
    """``versions.json`` under ``train_dir``: the fitted versions and the active one; thread-safe."""

    def __init__(self, train_dir: Path, base_version: str) -> None:
        self.train_dir = Path(train_dir)
        self.base_version = base_version
        self._lock = threading.Lock()
        self._fits: dict[str, FitVersion] = {}
        self._active = BASE
        path = self.train_dir / REGISTRY_FILE
        if path.is_file():
            data = json.loads(path.read_text())
            for rec in data.get("fits", []):
                fv = FitVersion(**rec)
                if Path(fv.onnx_dir).is_dir():
                    self._fits[fv.version] = fv
            active = data.get("active", BASE)
            self._active = active if active in self._fits else BASE

    @property
    def active(self) -> str:
        """The active version's name (:data:`BASE` for the base model)."""
        return self._active

    def names(self) -> list[str]:
        """Every servable version, base model first (what ``/versions`` lists)."""
        with self._lock:
            return [self.base_version, *self._fits]

    def get(self, name: str) -> FitVersion | None:
        """The fitted version ``name``; None for the base model (``base`` or its version string)."""
        if name in (BASE, self.base_version):
            return None
        with self._lock:
            fv = self._fits.get(name)
        if fv is None:
            raise VersionError(
                f"unknown model version {name!r} (known: {', '.join(self.names())}, or 'base')"
            )
        return fv

    def add(self, fv: FitVersion, activate: bool = True) -> None:
        """Register a fitted version (and make it the active one)."""
        with self._lock:
            self._fits[fv.version] = fv
            if activate:
                self._active = fv.version
            self._save()

    def activate(self, name: str) -> None:
        """Make ``name`` (``base``, the base version string or a fitted one) the active version."""
        fv = self.get(name)
        with self._lock:
            self._active = BASE if fv is None else fv.version
            self._save()

    def _save(self) -> None:
        self.train_dir.mkdir(parents=True, exist_ok=True)
        body = {"active": self._active, "fits": [asdict(f) for f in self._fits.values()]}
        atomic_write_text(self.train_dir / REGISTRY_FILE, json.dumps(body, indent=2))
