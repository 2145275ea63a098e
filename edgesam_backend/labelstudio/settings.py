"""Backend settings from the environment (label-studio-ml 2.x names where they exist).

| variable | default | meaning |
|---|---|---|
| ``HOST`` / ``PORT`` | ``0.0.0.0`` / ``9090`` | listen address |
| ``LABEL_STUDIO_URL`` (or ``LABEL_STUDIO_HOST``) | – | Label Studio's base URL (for ``/data/...`` URLs) |
| ``LABEL_STUDIO_API_KEY`` (or ``LABEL_STUDIO_ACCESS_TOKEN``) | – | legacy token or Personal Access Token |
| ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` | – | require HTTP Basic auth (not on ``/health``, ``/webhook``) |
| ``MODEL_DIR`` | ``.`` | ``encoder.onnx`` + ``decoder.onnx`` are looked up here and in ``onnx/`` |
| ``EDGESAM_INT8`` | ``false`` | use ``encoder.int8.onnx`` from the same directory |
| ``EDGESAM_DEVICE`` | ``cpu`` | ``cpu``, ``cuda[:N]``, ``tensorrt[:N]``, ``openvino``, ``coreml``, ``auto`` |
| ``EDGESAM_PRECISION`` | ``auto`` | ``fp32``, ``fp16``, ``int8``; ``auto``: fp16 files on a GPU if present |
| ``LOG_LEVEL`` | ``INFO`` | logging level |
| ``WORKERS`` / ``THREADS`` | ``1`` / ``4`` | uvicorn worker processes / concurrent requests per worker |
| ``EDGESAM_PREANNOTATE`` | ``from-prompts`` | ``none``, ``automatic`` or ``from-prompts`` (see the README) |
| ``EDGESAM_LABEL_MAP`` | – | JSON ``{"car": "Vehicle"}``: source label → output label (from-prompts) |
| ``EDGESAM_EMBEDDING_STORE`` / ``_MB`` | – / ``4096`` | persistent embedding store folder / its size bound |
| ``EDGESAM_TRAIN_*`` | see :class:`Settings` | learning from the project (:mod:`.fit`) |
| ``EDGESAM_SERVE_VERSION`` | – | serve ``base`` or a version of ``/versions`` (:mod:`.versions`) |
| ``EDGESAM_*`` | see :class:`Settings` | model, cache, image limits, mask choice, batch mode |

Request limits (a request over one is answered 4xx with a message naming the variable):
``EDGESAM_MAX_BODY_BYTES`` (413, counted while the body streams in, chunked or not),
``EDGESAM_MAX_CONTEXT_REGIONS`` (413, regions in ``params.context.result``),
``EDGESAM_MAX_PROMPT_POINTS`` (422, keypoints of one prompt), ``EDGESAM_MAX_IMAGE_BYTES`` /
``EDGESAM_MAX_IMAGE_PIXELS`` (413), ``EDGESAM_BATCH_TIME_BUDGET`` (seconds of one batch request, checked
between decoder batches), ``EDGESAM_PRECOMPUTE_MAX_SECONDS`` (estimated encoding work queued by webhooks).
Per-project ``extra_params`` are validated against the same limits as their ``EDGESAM_*`` twins
(:data:`EXTRA_PARAM_FIELDS`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from ..runtime.model_files import Precision
from ..runtime.providers import Device

MaskChoice = Literal["auto", "single", "stability", "iou"]
PreannotateMode = Literal["none", "automatic", "from-prompts"]


class SettingsError(ValueError):
    """An environment variable has an invalid value."""


class Settings(BaseModel):
    """All knobs of the Label Studio backend; build with :meth:`from_env`."""

    host: str = "0.0.0.0"
    port: int = Field(9090, ge=0, le=65535)
    label_studio_url: str | None = None
    label_studio_api_key: str | None = Field(None, repr=False)
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = Field(None, repr=False)
    model_dir: Path = Path(".")
    log_level: str = "INFO"
    workers: int = Field(1, ge=1)
    threads: int = Field(4, ge=1)

    # model
    checkpoint: str = "edge_sam_3x"
    onnx_dir: Path | None = None
    intra_op_threads: int | None = Field(None, ge=1)
    model_version: str | None = None
    int8: bool = False
    device: Device = "cpu"
    precision: Precision = "auto"

    # learning from the project (labelstudio/fit.py) and the served version (labelstudio/versions.py)
    train_dir: Path | None = None
    train_init: str | None = None
    train_steps: int = Field(200, ge=1, le=1_000_000)
    train_batch_size: int = Field(2, ge=1, le=256)
    train_lr: float = Field(1e-4, gt=0, le=1)
    train_freeze: Literal["none", "encoder", "encoder+prompt_encoder"] = "encoder"
    train_every: int = Field(0, ge=0)
    train_threads: int | None = Field(None, ge=1)
    train_min_tasks: int = Field(1, ge=1)
    train_max_drop: float = Field(1.0, ge=0)
    serve_version: str | None = None

    # interactive
    mask_choice: MaskChoice = "auto"
    refine_with_mask: bool = True
    polygon_tolerance: float = Field(1.0, ge=0)

    # batch / pre-annotation (context-less /predict, webhooks)
    preannotate: PreannotateMode = "from-prompts"
    preannotate_wait: float = Field(0.0, ge=0)
    label_map: dict[str, str] = Field(default_factory=dict)
    batch: bool = True
    batch_time_budget: float = Field(80.0, ge=0)
    default_label: str | None = None
    # everything mode: coverage-driven (a 32-point grid in nested levels, points only where masks are
    # missing, at most 256 prompts: never more than the former 16x16 grid) — see runtime/amg/coverage
    amg_strategy: Literal["grid", "coverage"] = "coverage"
    amg_max_prompts: int | None = Field(256, ge=1)
    amg_points_per_side: int = Field(32, ge=1, le=128)
    amg_points_per_batch: int = Field(64, ge=1, le=256)
    amg_pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    amg_stability_score_thresh: float = Field(0.95, ge=0, le=1)
    amg_box_nms_thresh: float = Field(0.7, gt=0, le=1)
    amg_min_mask_region_area: int = Field(0, ge=0, le=1_000_000)
    amg_use_proposals: bool = True
    batch_max_regions: int = Field(200, ge=1, le=2000)

    # images
    allowed_hosts: list[str] = Field(default_factory=list)
    local_files_document_root: Path | None = None
    max_image_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(64_000_000, ge=1)
    fetch_timeout: float = Field(15.0, gt=0)
    url_ttl: float = Field(60.0, ge=0)

    # cache
    cache_mb: float = Field(512.0, gt=0)
    embedding_store: Path | None = None
    embedding_store_mb: float = Field(4096.0, gt=0)
    precompute_on_webhook: bool = True
    precompute_max_seconds: float = Field(120.0, gt=0)

    # request limits (see the module docstring)
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_context_regions: int = Field(500, ge=1)
    max_prompt_points: int = Field(64, ge=1, le=256)
    webhook_auth: bool = True

    @field_validator("label_studio_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return json.loads(v)
            except ValueError:
                raise ValueError(f'must be a JSON object like {{"car": "Vehicle"}}, got {v!r}') from None
        return v

    @field_validator("max_prompt_points")
    @classmethod
    def _points(cls, v: int) -> int:
        from ..runtime.prompts import MAX_PROMPT_POINTS

        if v > MAX_PROMPT_POINTS:
            raise ValueError(f"must be at most {MAX_PROMPT_POINTS} (the predictor's hard limit)")
        return v

    @property
    def resolved_train_dir(self) -> Path:
        """Where fits and fitted versions live: ``EDGESAM_TRAIN_DIR``, else ``MODEL_DIR/edgesam-fits``."""
        return self.train_dir if self.train_dir is not None else self.model_dir / "edgesam-fits"

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user:
            return self.basic_auth_user, self.basic_auth_pass or ""
        return None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read the environment (``environ`` defaults to ``os.environ``); ``overrides`` win."""
        env = os.environ if environ is None else environ

        def get(*names: str) -> str | None:
            for n in names:
                v = env.get(n)
                if v is not None and v.strip() != "":
                    return v.strip()
            return None

        raw: dict[str, object] = {}
        mapping: dict[str, tuple[str, ...]] = {
            "host": ("HOST",),
            "port": ("PORT",),
            "label_studio_url": ("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST"),
            "label_studio_api_key": ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            "basic_auth_user": ("BASIC_AUTH_USER",),
            "basic_auth_pass": ("BASIC_AUTH_PASS",),
            "model_dir": ("MODEL_DIR",),
            "log_level": ("LOG_LEVEL",),
            "workers": ("WORKERS",),
            "threads": ("THREADS",),
            "local_files_document_root": (
                "LOCAL_FILES_DOCUMENT_ROOT",
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
            ),
        }
        for field in cls.model_fields:
            names = mapping.get(field, ("EDGESAM_" + field.upper(),))
            v = get(*names)
            if v is not None:
                raw[field] = v
        if isinstance(raw.get("allowed_hosts"), str):
            raw["allowed_hosts"] = [
                h.strip().lower() for h in str(raw["allowed_hosts"]).split(",") if h.strip()
            ]
        raw.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            errs = "; ".join(
                f"{_env_name(str(e['loc'][0]), mapping) if e['loc'] else '?'}: {e['msg']}"
                for e in exc.errors()
            )
            raise SettingsError(f"invalid backend settings: {errs}") from None


#: ``extra_params`` key → the :class:`Settings` field whose type and limits it has.
EXTRA_PARAM_FIELDS = {
    "mask_choice": "mask_choice",
    "default_label": "default_label",
    "points_per_side": "amg_points_per_side",
    "pred_iou_thresh": "amg_pred_iou_thresh",
    "stability_score_thresh": "amg_stability_score_thresh",
    "box_nms_thresh": "amg_box_nms_thresh",
    "min_mask_region_area": "amg_min_mask_region_area",
    "max_regions": "batch_max_regions",
    "use_proposals": "amg_use_proposals",
    "strategy": "amg_strategy",
    "max_prompts": "amg_max_prompts",
    "preannotate": "preannotate",
    "label_map": "label_map",
    "model_version": "serve_version",
}


def validate_extra_param(key: str, value: object) -> object:
    """``value`` checked (strictly: no ``"5"`` for 5, no ``true`` for 1) against the type and limits of
    the setting behind ``extra_params.key``; raises ``ValueError`` naming ``extra_params.key`` and its
    environment twin."""
    from typing import Annotated

    from pydantic import TypeAdapter

    name = EXTRA_PARAM_FIELDS[key]
    info = Settings.model_fields[name]
    typ = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    adapter: TypeAdapter[object] = TypeAdapter(typ)
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        msg = "; ".join(e["msg"] for e in exc.errors())
        raise ValueError(
            f"extra_params.{key} = {value!r}: {msg} (the limits of {_env_name(name, {})})"
        ) from None


def _env_name(field: str, mapping: Mapping[str, tuple[str, ...]]) -> str:
    return mapping.get(field, ("EDGESAM_" + field.upper(),))[0]
