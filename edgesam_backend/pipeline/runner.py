"""Orchestration of ``edgesam run``: list images, resolve the model, process what is not stored yet, then
build every export from the stored per-image results in source order.

Because exports are rebuilt from the store after every run, a run that was killed and re-run produces
byte-for-byte the same files as one uninterrupted run (and the same as the Ray executor's).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..runtime.resolve import EngineError, ResolvedModel, resolve_model
from . import storage
from .base import (
    ExportRun,
    ExportStep,
    ModelInfo,
    PipelineError,
    PromptStep,
    RefineStep,
    SourceStep,
    Step,
    StepContext,
)
from .config import ModelConfig, PipelineBase
from .progress import Progress
from .records import RESULT_FORMAT_VERSION, ImageItem, canonical_json, sha256_text
from .registry import load_registry
from .run_errors import PipelineFailed, PipelineInterrupted, PipelineStopped, open_store
from .store import ResultStore
from .worker import Outcome

log = logging.getLogger("edgesam_backend.pipeline")

#: Appended to "not cached / cannot download" model errors: where a pipeline takes a local model.
OFFLINE_ADVICE = (
    "In a pipeline, point at a local copy: `model.checkpoint: /path/to/edge_sam_3x.pth` in the YAML, "
    "EDGESAM_CHECKPOINT=/path/to/edge_sam_3x.pth (the examples read it), or "
    "`--set model.checkpoint=/path/to/edge_sam_3x.pth`; or an exported ONNX directory: model.onnx_dir, "
    "EDGESAM_ONNX_DIR or `--set model.onnx_dir=DIR`."
)


def resolve(cfg: ModelConfig) -> ResolvedModel:
    """The model of the config, by the one resolver (exporting once from a checkpoint if needed)."""
    from .. import weights

    try:
        return resolve_model(
            cfg.checkpoint, onnx_dir=cfg.onnx_dir, int8=cfg.int8, device=cfg.device, precision=cfg.precision
        )
    except weights.WeightsUnavailableError as exc:
        raise PipelineError(f"model: {exc} {OFFLINE_ADVICE}") from None
    except (EngineError, weights.WeightsError) as exc:
        raise PipelineError(f"model: {exc}") from None


def model_info(model: ResolvedModel) -> ModelInfo:
    """What the model offers, for the steps' start-of-run checks."""
    caps = model.capabilities
    return ModelInfo(has_proposals=caps.has_proposals, supports_mask_input=caps.supports_mask_input)


@dataclass
class Prepared:
    """The driver's view of a pipeline, ready to run."""

    pipe: PipelineBase
    source: SourceStep
    prompt: PromptStep
    refines: list[RefineStep]
    exports: list[ExportStep]
    output_dir: Path
    base_dir: Path
    #: ``output_dir`` when it is a URL: the store lives there; exports are built in the local
    #: ``output_dir`` (a temp dir) and uploaded after they validated.
    output_url: str | None = None

    @property
    def store_location(self) -> str:
        return self.output_url or str(self.output_dir)


def instantiate(pipe: PipelineBase) -> Prepared:
    reg = load_registry()
    base_dir = Path(pipe.source_path).resolve().parent if pipe.source_path else Path.cwd()
    url = pipe.output_dir if storage.is_url(pipe.output_dir) else None
    out_dir = Path(tempfile.mkdtemp(prefix="edgesam-exports-")) if url else Path(pipe.output_dir)
    source = prompt = None
    refines: list[RefineStep] = []
    exports: list[ExportStep] = []
    for i, cfg in enumerate(pipe.steps):  # type: ignore[attr-defined]
        spec = reg[cfg.kind]
        step: Step = spec.implementation(cfg, StepContext(base_dir, out_dir, i, pipe.step_where(i)))
        step.kind = cfg.kind
        if spec.role == "source":
            source = step
        elif spec.role == "prompt":
            prompt = step
        elif spec.role == "refine":
            refines.append(step)  # type: ignore[arg-type]
        elif spec.role == "export":
            exports.append(step)  # type: ignore[arg-type]
    if source is None or prompt is None:
        raise PipelineError("a pipeline needs a source and a prompt step")
    return Prepared(pipe, source, prompt, refines, exports, out_dir, base_dir, url)  # type: ignore[arg-type]


def config_hash(pipe: PipelineBase, model: ResolvedModel) -> str:
    """Hash of everything that affects per-image results: model files, prompt/segment/refine configs."""
    reg = load_registry()
    steps = []
    for cfg in pipe.steps:  # type: ignore[attr-defined]
        spec = reg[cfg.kind]
        if spec.role in ("prompt", "segment", "refine"):
            exclude = set(getattr(spec.implementation, "hash_exclude", ()))
            steps.append(cfg.model_dump(mode="json", exclude=exclude))
    doc = {
        "format": RESULT_FORMAT_VERSION,
        "encoder": model.encoder_sha256,
        "decoder": model.decoder_sha256,
        "steps": steps,
    }
    return sha256_text(canonical_json(doc))[:32]


def make_plan(prep: Prepared, model: ResolvedModel, chash: str) -> dict[str, Any]:
    pipe = prep.pipe
    return {
        "pipeline": pipe.model_dump(mode="json"),
        "encoder": str(model.encoder),
        "decoder": str(model.decoder),
        "device": model.execution.device,
        "config_hash": chash,
        "base_dir": str(prep.base_dir),
        "output_dir": prep.store_location,
        "where": {str(i): pipe.step_where(i) for i in range(len(pipe.steps))},  # type: ignore[attr-defined]
    }


def run_pipeline(
    pipe: PipelineBase,
    *,
    executor: str | None = None,
    progress: bool = True,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Run ``pipe`` (resuming from its store) and return the summary; see the module docstring.

    ``executor`` (``"local"`` / ``"ray"``) overrides the pipeline's executor type (with its defaults when
    the type differs). Raises :class:`PipelineStopped` when more than ``max_errors`` images fail.
    """
    t_start = time.perf_counter()
    stream = stream if stream is not None else sys.stderr
    prep = instantiate(pipe)
    exec_cfg = pipe.executor
    if executor is not None and executor != exec_cfg.type:
        from .config import LocalExecutor, RayExecutor

        exec_cfg = LocalExecutor() if executor == "local" else RayExecutor(type="ray")

    items = prep.source.items()
    from .steps.sources import check_unique_file_names

    check_unique_file_names(items)
    categories = prep.source.categories()
    prep.prompt.bind(items, categories, prep.source.kind)
    model = resolve(pipe.model)
    encoder, decoder = model.encoder, model.decoder
    log.info("%s", model.describe())
    info = model_info(model)
    prep.prompt.check_model(info)
    for r in prep.refines:
        r.check_model(info, prep.prompt.mode)
    chash = config_hash(pipe, model)
    fingerprints = [prep.prompt.fingerprint(it) for it in items]
    plan = make_plan(prep, model, chash)

    store = open_store(
        prep.store_location,
        {
            "pipeline": pipe.source_path,
            "config_hash": chash,
            "encoder": str(encoder),
            "decoder": str(decoder),
            "images": len(items),
        },
    )
    try:
        bar = Progress(len(items), stream=stream, enabled=progress)
        keys: dict[int, str] = {}
        failures: list[dict[str, Any]] = []
        max_errors = pipe.max_errors
        stopped = False
        workers: dict[str, dict[str, Any]] = {}

        def on_outcome(out: Outcome) -> bool:
            nonlocal stopped
            bar.update(out)
            if out.worker and out.status == "done":
                w = workers.setdefault(out.worker, {"node": out.node, "images": 0, "model_loads": 0})
                w["images"] += 1
                w["model_loads"] = max(w["model_loads"], out.model_loads)
                if out.gpus:  # gpus_per_worker: the GPU ids Ray assigned to the actor
                    w["gpus"] = out.gpus
            item = items[out.index]
            if out.status in ("done", "skipped"):
                assert out.key is not None
                keys[out.index] = out.key
                if out.status == "done":
                    store.clear_failure(item)
                return True
            failures.append({"file_name": item.file_name, "stage": out.stage, "error": out.error})
            store.record_failure(item, out.error, out.stage)
            bar.message(f"edgesam: failed {item.file_name} ({out.stage}): {out.error}")
            if max_errors is not None and len(failures) > max_errors:
                stopped = True
                return False
            return True

        t_proc = time.perf_counter()
        try:
            if exec_cfg.type == "ray":
                from .ray_executor import run_ray

                run_ray(
                    plan, items, fingerprints, store, on_outcome, exec_cfg, model_threads=pipe.model.threads
                )
            else:
                from .local import run_local

                run_local(
                    plan,
                    items,
                    fingerprints,
                    store,
                    on_outcome,
                    workers=exec_cfg.workers,
                    prefetch=exec_cfg.prefetch,
                    threads=pipe.model.threads,
                )
        except KeyboardInterrupt:
            bar.close()
            kept = sum(1 for k in keys.values() if store.has(k))
            raise PipelineInterrupted(
                f"interrupted: {bar.done} images finished in this run, {kept} of {len(items)} kept in "
                f"{store.root}; nothing was exported. Run the same command again to resume (kept images "
                "are skipped).",
                {"status": "interrupted", "images": len(items), "processed": bar.done, "kept": kept},
            ) from None
        proc_s = time.perf_counter() - t_proc
        bar.close()

        summary: dict[str, Any] = {
            "status": "ok",
            "pipeline": pipe.source_path,
            "name": pipe.name,
            "output_dir": storage.display(prep.store_location),
            "executor": exec_cfg.type,
            "device": model.execution.chosen,
            "providers": model.execution.names,
            "precision": model.precision,
            "config_hash": chash,
            "images": len(items),
            "processed": bar.done,
            "skipped": bar.skipped,
            "failed": len(failures),
            "new_masks": bar.masks,
            "failures": failures[:20],
            "seconds": 0.0,
            "images_per_s": round(bar.done / proc_s, 4) if bar.done and proc_s > 0 else 0.0,
        }
        if workers:  # Ray: which node and actor processed how many images
            nodes: dict[str, int] = {}
            for w in workers.values():
                nodes[w["node"]] = nodes.get(w["node"], 0) + w["images"]
            summary["nodes"] = nodes
            summary["workers"] = workers
        if stopped:
            summary["status"] = "stopped"
            summary["seconds"] = round(time.perf_counter() - t_start, 3)
            listed = "; ".join(f"{f['file_name']} ({f['stage']}): {f['error']}" for f in failures[:5])
            raise PipelineStopped(
                f"stopped after {len(failures)} failed images (max_errors: {max_errors}): {listed}"
                f"{'; ...' if len(failures) > 5 else ''}. Nothing was exported. "
                f"Failures are listed in {storage.display(store.failures_dir)}; fix or remove those images "
                "(or raise max_errors) "
                "and run again: finished images are kept and skipped.",
                summary,
            )
        if items and failures and not keys:
            summary["status"] = "failed"
            summary["seconds"] = round(time.perf_counter() - t_start, 3)
            listed = "; ".join(f"{f['file_name']} ({f['stage']}): {f['error']}" for f in failures[:5])
            raise PipelineFailed(
                f"all {len(items)} images failed, nothing was exported: {listed}"
                f"{'; ...' if len(failures) > 5 else ''}. Failures are listed in {store.failures_dir}.",
                summary,
            )
        summary["masks"], summary["exports"] = _export(prep, items, keys, store, categories, chash)
        if prep.output_url:
            summary["exports"] = _upload_exports(prep, summary["exports"])
        summary["seconds"] = round(time.perf_counter() - t_start, 3)
        return summary
    except storage.StorageError as exc:
        raise PipelineError(f"output_dir: {exc}") from None
    finally:
        store.release()
        if prep.output_url:
            shutil.rmtree(prep.output_dir, ignore_errors=True)


def _upload_exports(prep: Prepared, exports: dict[str, Any]) -> dict[str, Any]:
    """Copy the exports built in the local temp dir to the output URL; their summaries name the URL."""
    assert prep.output_url is not None
    try:
        storage.upload_tree(prep.output_dir, prep.output_url)
    finally:
        shutil.rmtree(prep.output_dir, ignore_errors=True)
    text = json.dumps(exports).replace(
        json.dumps(str(prep.output_dir))[1:-1], storage.display(prep.output_url)
    )
    return json.loads(text)  # type: ignore[no-any-return]


def _export(
    prep: Prepared,
    items: list[ImageItem],
    keys: dict[int, str],
    store: ResultStore,
    categories: list[str],
    chash: str,
) -> tuple[int, dict[str, Any]]:
    name = prep.pipe.name or (Path(prep.pipe.source_path).stem if prep.pipe.source_path else "pipeline")
    run = ExportRun(prep.output_dir, list(categories), chash, name, prep.source.category_ids())
    # labels produced by prompts but unknown to the source are appended in first-seen (source) order
    results = []
    seen = set(run.categories)
    for item in items:
        key = keys.get(item.index)
        if key is None:
            continue
        res = store.read_result(key)
        for m in res.masks:
            if m.label is None:
                run.unlabeled = True
            elif m.label not in seen:
                seen.add(m.label)
                run.categories.append(m.label)
        results.append((item, key))
    for ex in prep.exports:
        ex.begin(run)
    n_masks = 0
    for item, key in results:
        res = store.read_result(key)
        n_masks += len(res.masks)
        for ex in prep.exports:
            try:
                ex.add(item, res)
            except PipelineError:
                raise
            except Exception as exc:
                raise ex.error(f"exporting {item.file_name}: {exc}") from exc
    out: dict[str, Any] = {}
    for i, ex in enumerate(prep.exports):
        out[f"{i}:{ex.kind}" if sum(e.kind == ex.kind for e in prep.exports) > 1 else ex.kind] = ex.finish()
    return n_masks, out


__all__ = [
    "OFFLINE_ADVICE",
    "config_hash",
    "instantiate",
    "model_info",
    "resolve",
    "run_pipeline",
]
