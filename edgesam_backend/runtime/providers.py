"""The ``device`` option → onnxruntime execution providers (with their options).

Devices: ``cpu``, ``cuda`` / ``cuda:N``, ``tensorrt`` / ``tensorrt:N``, ``openvino``, ``coreml`` and
``auto``. Every accelerator list ends with the CPU provider, so nodes an accelerator cannot run still
run. ``auto`` takes the first of CUDA, CoreML, OpenVINO that the installed onnxruntime offers, else
CPU; TensorRT is never chosen by ``auto`` (it compiles an engine per input shape on first use, which
takes minutes) and must be asked for.

A provider that is asked for but missing raises :class:`DeviceError` naming the package to install
(``onnxruntime-gpu`` / ``onnxruntime-openvino`` *replace* ``onnxruntime``; ``pip install
'edgesam-backend[gpu]'`` installs the CUDA build).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
COREML = "CoreMLExecutionProvider"

DEVICES = ("cpu", "cuda", "cuda:N", "tensorrt", "tensorrt:N", "openvino", "coreml", "auto")
_DEVICE_RE = re.compile(r"(cpu|auto|openvino|coreml)|(cuda|tensorrt)(?::(\d+))?")
_AUTO_ORDER = ("cuda", "coreml", "openvino")

_INSTALL = {
    CUDA: "pip install 'edgesam-backend[gpu]' (onnxruntime-gpu, which replaces onnxruntime: "
    "pip uninstall onnxruntime first) and a CUDA 12 runtime",
    TENSORRT: "pip install 'edgesam-backend[gpu]' (onnxruntime-gpu, which replaces onnxruntime) "
    "and NVIDIA TensorRT",
    OPENVINO: "pip install onnxruntime-openvino (it replaces onnxruntime: pip uninstall onnxruntime first)",
    COREML: "use the standard onnxruntime wheel on macOS (it includes CoreML)",
}


class DeviceError(ValueError):
    """An unknown device, or one whose execution provider this onnxruntime lacks."""


ProviderSpec = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class ExecutionPlan:
    """Providers for one device.

    Attributes:
        device: the device asked for (normalised, e.g. ``"cuda:0"``; ``auto`` stays ``"auto"``).
        chosen: the device actually used (``auto`` resolved; e.g. ``"cpu"``).
        providers: ``(provider name, options)`` in priority order, ending with the CPU provider.
    """

    device: str
    chosen: str
    providers: tuple[ProviderSpec, ...]

    @property
    def names(self) -> list[str]:
        """Provider names in priority order."""
        return [name for name, _ in self.providers]

    def ort_arguments(self) -> tuple[list[str], list[dict[str, Any]]]:
        """``(providers, provider_options)`` for ``onnxruntime.InferenceSession``."""
        return self.names, [dict(opts) for _, opts in self.providers]


def parse_device(device: str) -> tuple[str, int | None]:
    """``("cuda", 1)`` for ``"cuda:1"``, ``("cpu", None)`` for ``"cpu"``; raises :class:`DeviceError`."""
    text = str(device).strip().lower()
    m = _DEVICE_RE.fullmatch(text)
    if m is None:
        raise DeviceError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if m.group(1):
        return m.group(1), None
    return m.group(2), int(m.group(3)) if m.group(3) is not None else None


def normalise_device(device: str) -> str:
    """The canonical spelling of ``device`` (``"CUDA"`` → ``"cuda:0"``); raises :class:`DeviceError`."""
    kind, index = parse_device(device)
    if kind in ("cuda", "tensorrt"):
        return f"{kind}:{index or 0}"
    return kind


#: A pydantic field type for a ``device`` option: validated and normalised by :func:`normalise_device`
#: (a :class:`DeviceError` is a ``ValueError``, so pydantic reports it at the field).
Device = Annotated[str, AfterValidator(normalise_device)]


def available_providers() -> list[str]:
    """The execution providers of the installed onnxruntime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _specs(kind: str, index: int) -> list[ProviderSpec]:
    if kind == "cuda":
        return [(CUDA, {"device_id": index})]
    if kind == "tensorrt":
        return [
            (TENSORRT, {"device_id": index, "trt_fp16_enable": False}),
            (CUDA, {"device_id": index}),
        ]
    if kind == "openvino":
        return [(OPENVINO, {"device_type": "CPU"})]
    if kind == "coreml":
        return [(COREML, {})]
    return []


def resolve_providers(device: str = "cpu", available: Sequence[str] | None = None) -> ExecutionPlan:
    """The execution plan for ``device``, checked against ``available`` (default: the installed
    onnxruntime's providers). Raises :class:`DeviceError` naming the package to install."""
    kind, index = parse_device(device)
    have = list(available) if available is not None else available_providers()
    if kind == "auto":
        for candidate in _AUTO_ORDER:
            specs = _specs(candidate, 0)
            if all(name in have for name, _ in specs):
                chosen = normalise_device(candidate)
                return ExecutionPlan("auto", chosen, (*specs, (CPU, {})))
        return ExecutionPlan("auto", "cpu", ((CPU, {}),))
    specs = _specs(kind, index or 0)
    for name, _ in specs:
        if name not in have:
            raise DeviceError(
                f"device {device!r} needs onnxruntime's {name}, which the installed onnxruntime lacks "
                f"(it has {', '.join(have) or 'none'}): {_INSTALL[name]}"
            )
    norm = normalise_device(device)
    return ExecutionPlan(norm, norm, (*specs, (CPU, {})))


__all__ = [
    "DEVICES",
    "DeviceError",
    "ExecutionPlan",
    "available_providers",
    "normalise_device",
    "parse_device",
    "resolve_providers",
]
