"""How ``edgesam run`` ends when it does not finish normally, and its exit codes: too many failed
images (:class:`PipelineStopped`, 1), every image failed (:class:`PipelineFailed`, 3), an unwritable
``output_dir`` (:class:`OutputDirError`, 4; raised by :func:`open_store`), Ctrl-C
(:class:`PipelineInterrupted`). 0 is a finished run, 2 a config error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import PipelineError
from .store import ResultStore

#: ``edgesam run`` exit codes besides 0 (ok), 1 (stopped by max_errors) and 2 (config errors).
EXIT_ALL_FAILED = 3
EXIT_OUTPUT_DIR = 4


class PipelineStopped(PipelineError):
    """The run stopped early (too many failed images); ``summary`` says where it got to."""

    exit_code = 1

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class PipelineFailed(PipelineStopped):
    """Every image of the run failed (nothing to export); ``summary`` lists the failures."""

    exit_code = EXIT_ALL_FAILED


class OutputDirError(PipelineError):
    """``output_dir`` cannot be created or written (the message names the path)."""

    exit_code = EXIT_OUTPUT_DIR


def open_store(output_dir: str | Path, run_info: dict[str, Any]) -> ResultStore:
    """The acquired result store of ``output_dir`` with the run info written; an unwritable directory
    (read-only, a parent that is a file, /proc) is an :class:`OutputDirError`."""
    store = ResultStore(output_dir)
    try:
        store.acquire()
    except OSError as exc:
        raise OutputDirError(
            f"output_dir {output_dir} is not writable: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(output_dir) else "")
        ) from None
    try:
        store.write_run_info(run_info)
    except OSError as exc:
        store.release()
        raise OutputDirError(f"output_dir {output_dir} is not writable: {exc.strerror or exc}") from None
    return store


class PipelineInterrupted(PipelineError):
    """Ctrl-C during a run: finished images are kept in the store; ``summary`` as far as it got."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary
