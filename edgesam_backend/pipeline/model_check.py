"""``edgesam validate``'s model check: does the pipeline's ``model`` block resolve, without downloading or
exporting anything? (:func:`edgesam_backend.runtime.resolve.model_availability`.)

* the ONNX files are on disk: they are resolved like a run does (precision, device, capabilities) and the
  prompt step's model requirements are checked (``prompt.proposals`` needs the RPN head);
* a local checkpoint not yet exported: checked as far as possible (the file, PyTorch for the export);
* a named model that is not cached: **not checked** (a run downloads it) — reported as such, with the
  offline advice that fits pipelines (:data:`.runner.OFFLINE_ADVICE`).
"""

from __future__ import annotations

from typing import Any

from .. import weights
from ..runtime.providers import DeviceError, resolve_providers
from ..runtime.resolve import NEEDS_DOWNLOAD, NEEDS_EXPORT, EngineError, model_availability
from .base import PipelineError
from .config import PipelineBase
from .runner import OFFLINE_ADVICE, instantiate, model_info, resolve


def check_model(pipe: PipelineBase) -> dict[str, Any]:
    """The ``model`` entry of ``edgesam validate``'s report: ``{"checked": bool, "status": "ready" |
    "export" | "not cached", ...}``. Raises :class:`PipelineError` when the model cannot resolve at all."""
    cfg = pipe.model
    try:
        resolve_providers(cfg.device)
        status, where = model_availability(cfg.checkpoint, cfg.onnx_dir)
    except (DeviceError, EngineError, weights.WeightsError) as exc:
        raise PipelineError(f"model: {exc}") from None
    if status == NEEDS_DOWNLOAD:
        return {
            "checked": False,
            "status": "not cached",
            "download": where,
            "message": f"model {cfg.checkpoint} is not cached: the first run downloads it from {where} "
            f"(not checked here). Offline? {OFFLINE_ADVICE}",
        }
    if status == NEEDS_EXPORT:
        return {
            "checked": True,
            "status": "export",
            "onnx_dir": where,
            "message": f"checkpoint {cfg.checkpoint} found; the first run exports it to ONNX in {where}",
        }
    model = resolve(cfg)
    info = model_info(model)
    instantiate(pipe).prompt.check_model(info)
    return {
        "checked": True,
        "status": "ready",
        "encoder": str(model.encoder),
        "decoder": str(model.decoder),
        "source": model.source,
        "model_version": model.model_version,
        "device": model.execution.chosen,
        "precision": model.precision,
    }


__all__ = ["check_model"]
