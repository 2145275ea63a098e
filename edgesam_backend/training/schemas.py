"""The training configs' JSON Schemas in ``schemas/`` (``python -m edgesam_backend.training.schemas``
regenerates them; a test checks they are in sync)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel

from ..yamlconfig import schema_text
from .distill_config import EvalConfig, Phase1Config, Phase2Config
from .finetune_config import FinetuneConfig
from .rpn import RpnTrainConfig

SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "distill-phase1.schema.json": Phase1Config,
    "distill-phase2.schema.json": Phase2Config,
    "eval.schema.json": EvalConfig,
    "rpn-train.schema.json": RpnTrainConfig,
    "finetune.schema.json": FinetuneConfig,
}


def schemas() -> dict[str, dict]:
    """File name → JSON Schema of every training config."""
    return {name: cls.model_json_schema() for name, cls in SCHEMA_FILES.items()}


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = out_dir / name
        path.write_text(schema_text(schema))
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m edgesam_backend.training.schemas [schemas/]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "schemas"
    for p in write_schemas(target):
        print(p)
