"""The pipeline language: pydantic models (the source of truth) and the JSON Schema generated from them.

The ``Pipeline`` model is built from the step registry (:func:`pipeline_model`: ``steps`` is a union of the
registered step configs, discriminated on ``kind``). Reading a YAML file with line-numbered errors is
:func:`edgesam_backend.pipeline.loader.load_pipeline`; ``edgesam schema`` writes
:func:`pipeline_json_schema`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Field,
    PrivateAttr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ..runtime.model_files import DECODER_FILE, ENCODER_FILE, Precision, requested_precision
from ..runtime.providers import Device
from ..yamlconfig import StrictModel
from .registry import StepSpec, load_registry
from .types import AnyPath, PositiveInt

SCHEMA_ID = "https://github.com/edgesam-backend/schemas/pipeline.schema.json"
SCHEMA_FILE = "pipeline.schema.json"


# --- model and executors ---------------------------------------------------------------------------


class ModelConfig(StrictModel):
    """Which EdgeSAM to run (onnxruntime). ``checkpoint``: a model name (``edge_sam``, ``edge_sam_3x``)
    or a ``.pth`` path (ONNX exported once into ``onnx_dir`` or the cache; a checkpoint with region
    proposal weights gives an encoder with proposals); or only ``onnx_dir`` with ``encoder.onnx`` +
    ``decoder.onnx``. ``threads``: onnxruntime intra-op threads per model (default: the executor's
    share of the CPUs). ``int8``: use ``encoder.int8.onnx`` from the same directory. ``device``:
    onnxruntime execution providers (``runtime/providers.py``). ``precision``: which ONNX files
    (``runtime/resolve.py``): ``auto`` takes ``encoder.fp16.onnx`` + ``decoder.fp16.onnx`` on
    CUDA/TensorRT when they exist, else fp32; ``fp16`` requires them (``edgesam export --fp16``)."""

    checkpoint: str | None = Field(None, min_length=1, description="model name or checkpoint path")
    onnx_dir: AnyPath | None = Field(None, description="directory with encoder.onnx and decoder.onnx")
    threads: PositiveInt | None = Field(None, description="onnxruntime intra-op threads per model")
    int8: bool = Field(False, description="use encoder.int8.onnx (written by `edgesam export --int8`)")
    device: Device = Field(
        "cpu", description="onnxruntime device: cpu, cuda[:N], tensorrt[:N], openvino, coreml or auto"
    )
    precision: Precision = Field(
        "auto",
        description="ONNX files: fp32, fp16 (`edgesam export --fp16`), int8, or auto (fp16 on cuda/tensorrt "
        "when its files exist, else fp32)",
    )

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        from ..weights import MODELS

        looks_like_path = "/" in v or os.sep in v or Path(v).suffix in (".pth", ".pt", ".bin", ".ckpt")
        if v in MODELS or not looks_like_path:
            if v not in MODELS:
                raise ValueError(
                    f"unknown model name {v!r} (known: {', '.join(MODELS)}; or give a .pth path)"
                )
            return v
        ctx = info.context or {}
        p = Path(v).expanduser()
        if ctx.get("base_dir") is not None and not p.is_absolute():
            p = Path(ctx["base_dir"]) / p
        if ctx.get("base_dir") is not None and ctx.get("check_paths", True) and not p.is_file():
            raise ValueError(f"checkpoint file not found: {p}")
        return str(p)

    @field_validator("onnx_dir")
    @classmethod
    def _onnx_files(cls, v: str | None, info: ValidationInfo) -> str | None:
        ctx = info.context or {}
        check = ctx.get("base_dir") is not None and ctx.get("check_paths", True)
        if v is not None and check and info.data.get("checkpoint") is None:
            missing = [n for n in (ENCODER_FILE, DECODER_FILE) if not (Path(v) / n).is_file()]
            if missing:
                raise ValueError(f"{v} lacks {', '.join(missing)} (write them with `edgesam export`)")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.checkpoint is None and self.onnx_dir is None:
            raise ValueError("give model.checkpoint (name or path) and/or model.onnx_dir")
        requested_precision(self.precision, self.int8)  # the resolver's rule, checked at load time
        return self


class LocalExecutor(StrictModel):
    """Threads in this process: per worker one model, an encoder thread and a mask thread (so image
    decoding, encoding and mask decoding overlap); ``prefetch`` images are read ahead."""

    type: Literal["local"] = "local"
    workers: PositiveInt = Field(1, description="models (each with its own onnxruntime sessions)")
    prefetch: PositiveInt = Field(4, description="images read and decoded ahead of the models")


class RayExecutor(StrictModel):
    """Ray Data: read tasks, an actor pool holding the ONNX sessions (``num_workers`` actors), results
    written by the actors. ``address``: an existing cluster (``auto``, ``ray://host:10001``); unset starts
    a local Ray with ``num_cpus`` CPUs (default: all). ``cpus_per_worker``: CPUs each actor reserves
    (fractions are fine; onnxruntime gets ``max(1, floor(cpus_per_worker))`` threads unless
    ``model.threads`` says otherwise); default ``(cluster CPUs - 1) / num_workers``. The actors may never
    reserve every CPU: Ray Data's read tasks would wait forever (the run refuses to start).
    ``gpus_per_worker``: GPUs each actor reserves (``0.25`` packs four actors on one GPU; pair it with
    ``model.device: cuda``). ``min_workers`` / ``max_workers``: an autoscaling actor pool (Ray Data
    adds actors up to ``max_workers`` while work is queued; the cluster autoscaler adds nodes for them);
    unset: a fixed pool of ``num_workers``."""

    type: Literal["ray"]
    address: str | None = Field(None, description="Ray cluster address; unset: start a local Ray")
    num_workers: PositiveInt = Field(2, description="actors, each holding one model")
    cpus_per_worker: float | None = Field(None, gt=0, description="CPUs reserved per actor (fractional ok)")
    num_cpus: PositiveInt | None = Field(None, description="CPUs of a local Ray started by the run")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs reserved per actor (fractional ok)")
    min_workers: PositiveInt | None = Field(None, description="autoscaling pool: fewest actors")
    max_workers: PositiveInt | None = Field(None, description="autoscaling pool: most actors")

    @model_validator(mode="after")
    def _pool(self) -> RayExecutor:
        if (self.min_workers is None) != (self.max_workers is None):
            raise ValueError("give both min_workers and max_workers (an autoscaling pool) or neither")
        if self.min_workers is not None and self.max_workers is not None:
            if self.min_workers > self.max_workers:
                raise ValueError(f"min_workers {self.min_workers} > max_workers {self.max_workers}")
        return self


ExecutorConfig = Annotated[Union[LocalExecutor, RayExecutor], Field(discriminator="type")]  # noqa: UP007


# --- the pipeline ----------------------------------------------------------------------------------


class PipelineBase(StrictModel):
    """Fields common to every pipeline; ``steps`` is added from the registry (see :func:`pipeline_model`)."""

    version: Literal[1] = Field(1, description="pipeline language version")
    name: str | None = Field(None, description="free text shown in the summary and the preview")
    model: ModelConfig
    executor: ExecutorConfig = Field(default_factory=LocalExecutor)
    output_dir: AnyPath = Field(description="results, store and exports (relative to the YAML file)")
    max_errors: int | None = Field(
        10, ge=0, description="failed images tolerated before the run stops (null: no limit)"
    )

    _source: str = PrivateAttr("")
    _where: dict[int, str] = PrivateAttr(default_factory=dict)

    @property
    def source_path(self) -> str:
        """The YAML file this pipeline came from ("" when built in code)."""
        return self._source

    def step_where(self, index: int) -> str:
        """``file:line:col`` of step ``index`` in the YAML ("" when unknown)."""
        return self._where.get(index, "")


def _step_union(specs: list[StepSpec]) -> Any:
    models = tuple(s.config_model for s in specs)
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007


@lru_cache(maxsize=8)
def _pipeline_model(kinds: tuple[str, ...], builtins_only: bool) -> type[PipelineBase]:
    reg = load_registry(builtins_only=builtins_only)
    specs = [reg[k] for k in kinds]
    step = _step_union(specs)
    return create_model(
        "Pipeline",
        __base__=PipelineBase,
        __module__=__name__,
        steps=(list[step], Field(min_length=1, description="source, prompt, segment, refine..., exports")),
    )


def pipeline_model(*, builtins_only: bool = False) -> type[PipelineBase]:
    """The ``Pipeline`` pydantic model for the registered steps (cached)."""
    reg = load_registry(builtins_only=builtins_only)
    return _pipeline_model(tuple(sorted(reg)), builtins_only)


def pipeline_json_schema(*, builtins_only: bool = True) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the pipeline language; ``edgesam schema`` writes it."""
    schema = pipeline_model(builtins_only=builtins_only).model_json_schema()
    schema["title"] = "EdgeSAM pipeline"
    schema["description"] = (
        "A bulk segmentation job for `edgesam run`. Generated from the pydantic models by `edgesam schema`."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def pipeline_from_dict(
    data: dict[str, Any], *, base_dir: str | os.PathLike[str] | None = None, check_paths: bool = False
) -> PipelineBase:
    """Validate an already-parsed pipeline (workers, tests); no YAML locations in errors."""
    ctx = {"base_dir": Path(base_dir), "check_paths": check_paths} if base_dir is not None else None
    return pipeline_model().model_validate(data, context=ctx)


__all__ = [
    "SCHEMA_FILE",
    "ExecutorConfig",
    "LocalExecutor",
    "ModelConfig",
    "PipelineBase",
    "RayExecutor",
    "pipeline_from_dict",
    "pipeline_json_schema",
    "pipeline_model",
]
