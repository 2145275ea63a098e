"""``export.labelstudio``: Label Studio tasks with ``brushlabels`` predictions, ready to import.

One task per image: ``data`` is the source task's data for ``source.labelstudio`` (so the predictions land
on the same image), else ``{data_key: image_url.format(file_name=...)}``; one prediction per task with a
``brushlabels`` region per mask (Label Studio's own RLE, :mod:`edgesam_backend.formats.labelstudio.rle`,
encoded straight from the mask's COCO RLE: one rasterisation, no decode back). Region ids are
deterministic. The written file is parsed back and every region's fields and RLE header are checked (the
codec itself is byte-identical to Label Studio's, checked against the sdk's output in the test suite).

``push`` (optional) also sends the predictions to a running Label Studio: tasks from a
``source.labelstudio`` export get ``POST /api/predictions`` (the existing task), other tasks are imported
into ``project`` with ``POST /api/projects/<id>/import``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ....fileio import atomic_write_text
from ....formats.labelstudio.regions import brush_value, region
from ....formats.labelstudio.rle import coco_to_rle, rle_length
from ....formats.labelstudio.urls import LOCAL_FILES_URL
from ...base import ExportRun, ExportStep, PipelineError, StepConfig
from ...records import ImageItem, ImageResult


class PushConfig(StepConfig):
    """Where to send the predictions (``${ENV}`` keeps the key out of the file)."""

    url: str = Field(min_length=1, description="Label Studio base URL (http(s)://host:port)")
    api_key: str = Field(min_length=1, description="API token (Account & Settings)")
    project: int | None = Field(None, ge=1, description="project id to import new tasks into")
    auth_scheme: Literal["Token", "Bearer"] = Field("Token", description="Authorization header scheme")
    timeout: float = Field(60.0, gt=0, description="seconds per request")
    batch_size: int = Field(100, ge=1, description="tasks per import request")


class LabelStudioExportConfig(StepConfig):
    path: str = Field("labelstudio.json", min_length=1, description="output file (relative to output_dir)")
    from_name: str = Field("tag", min_length=1, description="name of the BrushLabels control")
    to_name: str = Field("image", min_length=1, description="name of the Image object")
    data_key: str = Field("image", min_length=1, description="task data key of the image URL")
    image_url: str = Field(
        LOCAL_FILES_URL,
        min_length=1,
        description="URL template for images not from a Label Studio source ({file_name}, {path})",
    )
    default_label: str = Field("object", min_length=1, description="brush label of unlabeled masks")
    model_version: str | None = Field(None, description="prediction model_version (default: edgesam-<hash>)")
    push: PushConfig | None = Field(None, description="also send to a running Label Studio")


def _round(v: float | None) -> float:
    return 0.0 if v is None else round(float(v), 4)


class LabelStudioExport(ExportStep):
    Config = LabelStudioExportConfig

    def begin(self, run: ExportRun) -> None:
        super().begin(run)
        self.tasks: list[dict[str, Any]] = []
        self.regions = 0
        self.version = self.config.model_version or f"edgesam-{run.config_hash[:12]}"

    def add(self, item: ImageItem, result: ImageResult) -> None:
        c: LabelStudioExportConfig = self.config
        regions = []
        for j, m in enumerate(result.masks):
            label = m.label if m.label is not None else c.default_label
            regions.append(
                region(
                    id=f"es{item.index}_{j}",
                    from_name=c.from_name,
                    to_name=c.to_name,
                    type="brushlabels",
                    value=brush_value(coco_to_rle(m.segmentation), label),
                    width=result.width,
                    height=result.height,
                    score=_round(m.score),
                )
            )
        ls_task = item.extra.get("ls_task")
        if ls_task is not None:
            data = ls_task.get("data", {})
        else:
            data = {c.data_key: c.image_url.format(file_name=item.file_name, path=item.path)}
        scores = [r["score"] for r in regions]
        task: dict[str, Any] = {
            "data": data,
            "predictions": [
                {
                    "model_version": self.version,
                    "score": round(float(np.mean(scores)), 4) if scores else 0.0,
                    "result": regions,
                }
            ],
            "meta": {"file_name": item.file_name},
        }
        if ls_task is not None and ls_task.get("id") is not None:
            task["meta"]["source_task_id"] = ls_task["id"]
        self.tasks.append(task)
        self.regions += len(regions)

    def finish(self) -> dict[str, Any]:
        c: LabelStudioExportConfig = self.config
        path = self.output_path(c.path)
        text = json.dumps(self.tasks, separators=(",", ":"))
        validate_labelstudio_text(text, what=str(path))
        atomic_write_text(path, text + "\n")
        out: dict[str, Any] = {
            "path": str(path),
            "tasks": len(self.tasks),
            "regions": self.regions,
        }
        if c.push is not None:
            out["push"] = push_tasks(self.tasks, c.push)
        return out


def validate_labelstudio_text(text: str, *, what: str = "file") -> None:
    """Parse the tasks and check every brush region: fields, and an RLE whose header declares exactly
    ``original_height * original_width * 4`` values (each region was already decoded back and compared
    with its mask when it was added)."""
    try:
        tasks = json.loads(text)
        if not isinstance(tasks, list):
            raise ValueError("not a list of tasks")
        for t in tasks:
            if not isinstance(t.get("data"), dict) or not t["data"]:
                raise ValueError("a task without data")
            for pred in t.get("predictions", []):
                for r in pred["result"]:
                    v = r["value"]
                    if r["type"] != "brushlabels" or v["format"] != "rle" or not v["brushlabels"]:
                        raise ValueError(f"region {r.get('id')} is not a brushlabels RLE region")
                    num = rle_length(v["rle"])
                    if num != int(r["original_height"]) * int(r["original_width"]) * 4:
                        raise ValueError(f"region {r['id']}: RLE length {num} does not match the image size")
    except (KeyError, ValueError, TypeError) as exc:
        raise PipelineError(f"export.labelstudio: {what} does not validate: {exc}") from None


def push_tasks(tasks: list[dict[str, Any]], cfg: PushConfig) -> dict[str, Any]:
    """Send predictions to Label Studio (see the module docstring); returns counts."""
    import httpx

    base = cfg.url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise PipelineError(
            f"export.labelstudio.push.url must start with http:// or https://, got {cfg.url!r}"
        )
    headers = {"Authorization": f"{cfg.auth_scheme} {cfg.api_key}", "Content-Type": "application/json"}
    existing = [t for t in tasks if t.get("meta", {}).get("source_task_id") is not None]
    new = [t for t in tasks if t.get("meta", {}).get("source_task_id") is None]
    if new and cfg.project is None:
        raise PipelineError(
            "export.labelstudio.push: set 'project' to import tasks that are not from Label Studio"
        )

    def check(resp: httpx.Response, what: str) -> None:
        if resp.status_code >= 300:
            raise PipelineError(
                f"export.labelstudio.push: {what} failed with HTTP {resp.status_code}: {resp.text[:300]}"
            )

    try:
        with httpx.Client(base_url=base, headers=headers, timeout=cfg.timeout) as client:
            for t in existing:
                pred = t["predictions"][0]
                body = {
                    "task": t["meta"]["source_task_id"],
                    "model_version": pred["model_version"],
                    "score": pred["score"],
                    "result": pred["result"],
                }
                check(
                    client.post("/api/predictions", json=body), f"POST /api/predictions (task {body['task']})"
                )
            for s in range(0, len(new), cfg.batch_size):
                chunk = new[s : s + cfg.batch_size]
                check(client.post(f"/api/projects/{cfg.project}/import", json=chunk), "import")
    except httpx.HTTPError as exc:
        raise PipelineError(f"export.labelstudio.push: cannot reach {base}: {exc}") from None
    return {"predictions": len(existing), "imported_tasks": len(new)}


__all__ = ["LabelStudioExport", "LabelStudioExportConfig", "push_tasks", "validate_labelstudio_text"]
