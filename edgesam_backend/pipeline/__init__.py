"""YAML pipeline DSL for bulk segmentation: ``edgesam run pipeline.yaml``.

* :mod:`.config` — the language (pydantic models, JSON Schema); :mod:`.loader` — the YAML loader with
  line-numbered errors (:mod:`.overrides` ``--set``, :mod:`.checks` step order, :mod:`.diagnostics`);
* :mod:`.registry` — step plugins (entry-point group ``edgesam_backend.steps``);
* :mod:`.base` — step interfaces; :mod:`.steps` — the built-in steps;
* :mod:`.runner`, :mod:`.local`, :mod:`.ray_executor`, :mod:`.store` — execution, resume, results.
"""

from __future__ import annotations

from .base import PipelineError
from .config import pipeline_json_schema, pipeline_model
from .loader import load_pipeline
from .registry import register_step

__all__ = [
    "PipelineError",
    "load_pipeline",
    "pipeline_json_schema",
    "pipeline_model",
    "register_step",
    "run_pipeline",
]


def run_pipeline(*args, **kwargs):
    """See :func:`edgesam_backend.pipeline.runner.run_pipeline`."""
    from .runner import run_pipeline as _run

    return _run(*args, **kwargs)
