"""The model learns from the project: Label Studio's "Start Training" (``START_TRAINING`` on /webhook)
and, with ``EDGESAM_TRAIN_EVERY=N``, every N new or updated annotations.

A fit is one background job (one at a time per backend; a second request answers 409):

1. **collect** (in the webhook call, so errors reach Label Studio's UI): the project's tasks through
   its API (``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY``), those with submitted brush/polygon masks,
   split into training and held-out (:mod:`.fit_data`); then, in the job, the images;
2. **train**: ``edgesam finetune`` (the supervised fine-tuning, box + point prompts from each mask with
   correction clicks) in a child process at lower CPU priority, from the checkpoint of the version
   being served (``EDGESAM_TRAIN_INIT`` for the base model when it was given as ONNX), at the served
   model's input size; progress (step, loss) read from its ``log.jsonl`` into ``/metrics``;
3. **export**: ``edgesam export`` of the result (validated against PyTorch by the export itself);
4. **validate**: held-out mIoU (box and one point) of the new and the served model, both through
   onnxruntime; the new one is kept only if its box mIoU is not lower than the served one's by more
   than ``EDGESAM_TRAIN_MAX_DROP`` points;
5. **swap**: registered in ``TRAIN_DIR/versions.json`` (:mod:`.versions`), then served: requests
   already running finish on the model they started with, new ones use the new version, which
   ``/versions`` lists and every prediction carries as ``model_version``.

Training needs the ``[torch]`` extra; without it the webhook answers 422 with the install command.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.base import BasePredictor
from .errors import BackendError, Unprocessable
from .fit_data import FitSet, annotated_tasks, held_out_miou, split, write_set
from .images import ImageFetcher
from .lsapi import LabelStudioAPI, LabelStudioAPIError
from .metrics import Metrics
from .settings import Settings
from .versions import FitVersion, VersionRegistry

log = logging.getLogger("edgesam_backend.labelstudio")

CHECKPOINT_NAME = "edge_sam_finetuned.pth"


class Conflict(BackendError):
    status = 409


@dataclass
class FitJob:
    """One fit's state (what ``/metrics`` and the logs show)."""

    id: int
    project: int
    reason: str
    state: str = "collecting"  # collecting | training | exporting | validating | done | rejected | failed
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    tasks: int = 0
    held_out_separate: bool = False
    version: str | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None


@dataclass
class Served:
    """The served model as the fit sees it: its version, predictor and checkpoint (None: unknown)."""

    version: str
    predictor: BasePredictor
    checkpoint: str | None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgesam_backend.cli", *args]


def _lower_priority() -> None:  # pragma: no cover - runs in the child
    try:
        os.nice(10)
    except OSError:
        pass


class FitJobs:
    """Starts and runs fits; ``served()`` reads the current model, ``swap(version)`` serves a new one."""

    def __init__(
        self,
        settings: Settings,
        api: LabelStudioAPI,
        fetcher: ImageFetcher,
        registry: VersionRegistry,
        metrics: Metrics,
        served: Callable[[], Served],
        swap: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.api = api
        self.fetcher = fetcher
        self.registry = registry
        self.metrics = metrics
        self.served = served
        self.swap = swap
        self._lock = threading.Lock()
        self._job: FitJob | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._counts: dict[int, int] = {}
        self.history: list[FitJob] = []
        m = metrics
        m.gauge("edgesam_training_running", "1 while a fit runs.", lambda: float(self.running is not None))
        m.gauge("edgesam_training_step", "Step of the running (or last) fit.", lambda: self._last("step"))
        m.gauge(
            "edgesam_training_max_steps",
            "Steps of the running (or last) fit.",
            lambda: self._last("max_steps"),
        )
        m.gauge("edgesam_training_loss", "Last logged training loss.", lambda: self._last("loss"))

    def _last(self, attr: str) -> float:
        job = self._job or (self.history[-1] if self.history else None)
        v = getattr(job, attr) if job is not None else None
        return float("nan") if v is None else float(v)

    @property
    def running(self) -> FitJob | None:
        return self._job

    def status(self) -> dict[str, Any]:
        """The running job and the last finished ones (newest last)."""
        return {
            "running": asdict(self._job) if self._job else None,
            "finished": [asdict(j) for j in self.history[-5:]],
        }

    # --- triggers ---------------------------------------------------------------------------------
    def on_annotation(self, project: int | None) -> FitJob | None:
        """Count an ANNOTATION_CREATED/UPDATED; start a fit every ``train_every`` of them (0: never)."""
        n = self.settings.train_every
        if not n or project is None:
            return None
        with self._lock:
            self._counts[project] = self._counts.get(project, 0) + 1
            due = self._counts[project] >= n and self._job is None
            if due:
                self._counts[project] = 0
        if not due:
            return None
        try:
            return self.start(project, f"every {n} annotations")
        except BackendError as exc:
            log.warning("automatic fit of project %s not started: %s", project, exc.message)
            return None

    def start(self, project: int, reason: str) -> FitJob:
        """Check what a fit needs, list the project's annotated tasks, then train in the background.

        Raises:
            Unprocessable: no PyTorch, no Label Studio API, no checkpoint to start from, no masks.
            Conflict: a fit is already running.
        """
        from ..runtime.resolve import torch_available

        if not torch_available():
            raise Unprocessable(
                "training needs PyTorch, which this backend does not have: pip install "
                "'edgesam-backend[torch]' (serving stays torch-free; the fit runs in a child process)"
            )
        if not self.api.configured:
            raise Unprocessable(
                "training reads the project's annotations through Label Studio's API: set LABEL_STUDIO_URL "
                "and LABEL_STUDIO_API_KEY"
            )
        served = self.served()
        if served.checkpoint is None:
            raise Unprocessable(
                f"the served model {served.version} came from ONNX files: set EDGESAM_TRAIN_INIT to the "
                "checkpoint (name or .pth) they were exported from, so that training can start from it"
            )
        job = self._claim(project, reason)
        try:
            tasks, key = self._annotated(job.project)
        except BaseException:
            with self._lock:
                self._job = None
            raise
        job.tasks = len(tasks)
        self.metrics.training.inc("started")
        self._thread = threading.Thread(
            target=self._run, args=(job, tasks, key, served), name=f"edgesam-fit-{job.id}", daemon=True
        )
        self._thread.start()
        log.info(
            "fit %d of project %d started (%s): %d annotated tasks", job.id, job.project, reason, len(tasks)
        )
        return job

    def _claim(self, project: int, reason: str) -> FitJob:
        """The new job, now the running one; :class:`Conflict` while another runs."""
        with self._lock:
            if self._job is not None:
                j = self._job
                raise Conflict(
                    f"fit {j.id} of project {j.project} is running ({j.state}, step {j.step}/{j.max_steps})"
                )
            self._job = FitJob(id=len(self.history) + 1, project=int(project), reason=reason)
            return self._job

    def run_sync(self, project: int, tasks: list[dict[str, Any]], image_key: str) -> FitJob:
        """Run a fit on given tasks in this thread (no Label Studio API needed: the images are
        fetched like ``/predict`` fetches them); the finished job. Raises :class:`Conflict`."""
        job = self._claim(project, "run_sync")
        kept = annotated_tasks(tasks, image_key)
        job.tasks = len(kept)
        self.metrics.training.inc("started")
        self._run(job, kept, image_key, self.served())
        return job

    def _annotated(self, project: int) -> tuple[list[dict[str, Any]], str]:
        from .config import LabelConfigError, parse_label_config

        try:
            schema = self.api.project(project).get("label_config", "")
            key = parse_label_config(schema).image.value_key
            tasks = annotated_tasks(list(self.api.tasks(project)), key)
        except LabelStudioAPIError as exc:
            raise Unprocessable(f"could not read project {project} from Label Studio: {exc}") from None
        except LabelConfigError as exc:
            raise Unprocessable(f"project {project}'s label config: {exc}") from None
        need = self.settings.train_min_tasks
        if len(tasks) < need:
            raise Unprocessable(
                f"project {project} has {len(tasks)} task(s) with submitted brush/polygon masks; a fit needs "
                f"at least {need} (EDGESAM_TRAIN_MIN_TASKS)"
            )
        return tasks, key

    # --- the job ----------------------------------------------------------------------------------
    def _run(self, job: FitJob, tasks: list[dict[str, Any]], key: str, served: Served) -> None:
        work = self.settings.resolved_train_dir / "jobs" / f"{int(time.time())}-p{job.project}-{job.id}"
        try:
            train_tasks, held_tasks, separate = split(tasks)
            job.held_out_separate = separate
            mp = self.settings.max_image_pixels
            train = write_set(train_tasks, key, self.fetcher, work / "train", mp)
            held = write_set(held_tasks, key, self.fetcher, work / "val", mp) if separate else train
            ckpt = self._train(job, work, train, held, served)
            job.state = "exporting"
            onnx = work / "onnx"
            self._child(_cli("export", "--checkpoint", str(ckpt), "--out", str(onnx)), work / "export.log")
            self._validate_and_swap(job, work, onnx, ckpt, held, served)
        except Exception as exc:
            job.state, job.message = "failed", f"{type(exc).__name__}: {exc}"
            self.metrics.training.inc("failed")
            log.error("fit %d of project %d failed: %s", job.id, job.project, job.message)
        finally:
            job.finished = time.time()
            shutil.rmtree(work / "train" / "images", ignore_errors=True)
            shutil.rmtree(work / "val" / "images", ignore_errors=True)
            with self._lock:
                self.history.append(job)
                self._job = None

    def _train(self, job: FitJob, work: Path, train: FitSet, held: FitSet, served: Served) -> Path:
        s = self.settings
        job.state, job.max_steps = "training", s.train_steps
        run = work / "run"
        cfg = {
            "train_images": str(train.images),
            "train_annotations": str(train.export),
            "val_images": str(held.images),
            "val_annotations": str(held.export),
            "format": "labelstudio",
            "output_dir": str(run),
            "init": served.checkpoint,
            "image_size": int(served.predictor.image_size),
            "freeze": s.train_freeze,
            "max_steps": s.train_steps,
            "batch_size": s.train_batch_size,
            "lr": s.train_lr,
            "warmup_steps": min(20, s.train_steps // 10),
            "seed": 0,
            "threads": s.train_threads,
            "val_at_start": False,
            "checkpoint_every": 0,
            "log_every": 10,
            "prompts": {"max_objects": 8, "correction_rounds": 1},
        }
        path = work / "finetune.yaml"
        path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML

        def progress() -> None:
            log_file = run / "log.jsonl"
            if not log_file.is_file():
                return
            for line in log_file.read_text().splitlines()[-5:]:
                rec = json.loads(line) if line.startswith("{") else {}
                if "step" in rec:
                    job.step, job.loss = int(rec["step"]), float(rec["loss"])

        self._child(_cli("finetune", str(path)), work / "train.log", progress)
        progress()
        job.metrics["train"] = json.loads((run / "metrics.json").read_text())
        return run / CHECKPOINT_NAME

    def _child(self, cmd: list[str], log_path: Path, tick: Callable[[], None] | None = None) -> None:
        """Run a CLI child process (lower priority), its output into ``log_path``; raises on failure."""
        env = dict(os.environ)
        if self.settings.train_threads:
            env["OMP_NUM_THREADS"] = str(self.settings.train_threads)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as out:
            pre = _lower_priority if os.name == "posix" else None
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pre)
            self._proc = proc
            try:
                while proc.poll() is None:
                    if self._closed:
                        proc.terminate()
                    if tick is not None:
                        tick()
                    time.sleep(0.5)
            finally:
                self._proc = None
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace")[-800:]
            raise RuntimeError(f"`{' '.join(cmd[2:4])}` exited with {proc.returncode}: {tail}")

    def _validate_and_swap(
        self, job: FitJob, work: Path, onnx: Path, ckpt: Path, held: FitSet, served: Served
    ) -> None:
        from ..engine import onnx_predictor
        from ..runtime.resolve import resolve_model

        job.state = "validating"
        s = self.settings
        served_encoder = getattr(served.predictor, "encoder_path", None)
        if s.train_freeze != "none" and served_encoder is not None and Path(served_encoder).is_file():
            # the encoder did not train: keep the served file, so its embeddings (cache, store) stay valid
            shutil.copy2(served_encoder, onnx / "encoder.onnx")
        model = resolve_model(onnx_dir=onnx, device=s.device)
        new = onnx_predictor(model, threads=s.intra_op_threads)
        after = held_out_miou(new, held)
        before = held_out_miou(served.predictor, held)
        job.metrics.update(
            held_out_before=before, held_out_after=after, held_out_separate=job.held_out_separate
        )
        version = model.model_version
        job.version = version
        drop = (before["miou_box"] or 0.0) - (after["miou_box"] or 0.0)
        if drop > s.train_max_drop:
            job.state = "rejected"
            job.message = (
                f"held-out box mIoU {after['miou_box']} vs {before['miou_box']} served: dropped {drop:.2f} "
                f"points (> EDGESAM_TRAIN_MAX_DROP={s.train_max_drop}); still serving {served.version}"
            )
            self.metrics.training.inc("rejected")
            log.warning("fit %d rejected: %s", job.id, job.message)
            return
        target = s.resolved_train_dir / "versions" / version
        if not target.is_dir():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ckpt, onnx / CHECKPOINT_NAME)
            (onnx / "fit.json").write_text(json.dumps(job.metrics, indent=2))
            onnx.rename(target)  # one rename: the version directory appears complete or not at all
        self.registry.add(
            FitVersion(
                version=version,
                onnx_dir=str(target),
                checkpoint=str(target / CHECKPOINT_NAME),
                parent=served.version,
                project=job.project,
                metrics=job.metrics,
            )
        )
        self.swap(version)
        job.state = "done"
        job.message = f"serving {version} (held-out box mIoU {before['miou_box']} → {after['miou_box']})"
        self.metrics.training.inc("swapped")
        log.info("fit %d of project %d: %s", job.id, job.project, job.message)

    def close(self, timeout: float = 5.0) -> None:
        """Stop a running fit (its child process is terminated) and wait for the job thread."""
        self._closed = True
        if self._thread is not None:
            self._thread.join(timeout)
