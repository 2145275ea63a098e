"""Checks pydantic cannot express: the step order and cross-step rules, each error at its step's line.

The order is one source first, one prompt step, one segment step, refine steps, exports last; a local Ray
executor must leave CPUs for Ray Data's read tasks (:func:`~.cpus.cpu_budget`); each step class may add
its own ``check_config(step, info)`` (yielding ``(sub_location, message)`` pairs).
"""

from __future__ import annotations

import os

from .base import ROLES, PipelineError
from .config import PipelineBase
from .cpus import cpu_budget, pool_size
from .diagnostics import YamlErrors
from .registry import StepSpec

_ROLE_RANK = {role: i for i, role in enumerate(ROLES)}  # the required order


def check_structure(pipe: PipelineBase, reg: dict[str, StepSpec], errs: YamlErrors) -> None:
    """Step order and cross-step checks (each error at its step)."""
    steps = pipe.steps  # type: ignore[attr-defined]
    roles = [reg[s.kind].role for s in steps]
    counts = {r: roles.count(r) for r in ROLES}
    sources = [i for i, r in enumerate(roles) if r == "source"]
    if not sources:
        errs.add(("steps", 0, "kind"), f"the first step must be a source (source.*), got {steps[0].kind!r}")
    elif sources[0] != 0:
        errs.add(("steps", sources[0], "kind"), "the source step must be the first step")
    for i in sources[1:]:
        errs.add(("steps", i, "kind"), "only one source step is allowed")
    seen_prompt = seen_segment = False
    for i, (step, role) in enumerate(zip(steps, roles, strict=True)):
        if role == "prompt":
            if seen_prompt:
                errs.add(("steps", i, "kind"), "at most one prompt step is allowed")
            seen_prompt = True
        if role == "segment":
            if seen_segment:
                errs.add(("steps", i, "kind"), "only one segment step is allowed")
            if not seen_prompt:
                errs.add(("steps", i, "kind"), "segment needs a prompt step (prompt.*) before it")
            seen_segment = True
        if (
            i > 0
            and _ROLE_RANK[role] < _ROLE_RANK[roles[i - 1]]
            and role != "source"
            and roles[i - 1] != "source"
        ):
            errs.add(
                ("steps", i, "kind"),
                f"{step.kind} ({role}) cannot follow {steps[i - 1].kind} ({roles[i - 1]}): the order is "
                "source, prompt, segment, refine..., exports",
            )
        if role == "refine" and not seen_segment:
            errs.add(("steps", i, "kind"), "refine steps come after the segment step")
    if counts["prompt"] and not counts["segment"]:
        i = roles.index("prompt")
        errs.add(("steps", i, "kind"), "a prompt step needs a segment step after it")
    if not counts["prompt"]:
        errs.add(("steps",), "a pipeline needs a prompt step (prompt.grid, prompt.source_boxes, ...)")
    if not counts["export"]:
        errs.add(("steps",), "a pipeline needs at least one export step (export.*)")
    ex = pipe.executor
    if ex.type == "ray" and not ex.address:  # a local Ray: its CPUs are known now
        try:
            cpu_budget(pool_size(ex)[1], ex.cpus_per_worker, float(ex.num_cpus or os.cpu_count() or 1))
        except PipelineError as exc:
            field = "cpus_per_worker" if ex.cpus_per_worker is not None else "num_workers"
            errs.add(("executor", field), str(exc).removeprefix("executor (ray): "))
    prompt_mode = next(
        (reg[s.kind].implementation.mode for s, r in zip(steps, roles, strict=True) if r == "prompt"),
        "prompts",
    )
    info = {"prompt_mode": prompt_mode, "roles": roles, "kinds": [s.kind for s in steps]}
    for i, step in enumerate(steps):
        check = getattr(reg[step.kind].implementation, "check_config", None)
        if check is None:
            continue
        for sub, msg in check(step, info):
            errs.add(("steps", i, *sub), msg)


__all__ = ["check_structure"]
