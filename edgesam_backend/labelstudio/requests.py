"""Request bodies of the backend's POST routes, read under limits: ``application/json`` only (415),
bytes counted while streaming, chunked or not (413 at ``max_body_bytes``, nothing more is read),
nesting too deep to parse (400), context regions and prompt points (413 / 422); and running a request's
work on a worker thread that is told to stop when the client disconnects (:mod:`.budget`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from . import budget
from .errors import BackendError, BadRequest, Unprocessable
from .settings import Settings

T = TypeVar("T")

#: Seconds between checks whether the client of a running batch request is still connected.
DISCONNECT_POLL_S = 0.25


async def read_json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object; see the module docstring for the limits."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise BackendError(f"request body must be application/json (got {ctype or 'no content-type'})", 415)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BackendError(f"request body of {length} bytes is over the limit of {limit}", 413)
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BackendError(f"request body is over the limit of {limit} bytes", 413)
    try:
        data = json.loads(bytes(buf))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("request body is JSON nested too deeply to parse") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def check_context_size(context: Any, settings: Settings) -> None:
    """413 over ``EDGESAM_MAX_CONTEXT_REGIONS`` regions, 422 over ``EDGESAM_MAX_PROMPT_POINTS``
    keypoints; checked before any region is parsed."""
    result = context.get("result") if isinstance(context, dict) else None
    if not isinstance(result, list):
        return  # parse_context answers the malformed case
    n_max = settings.max_context_regions
    if len(result) > n_max:
        raise BackendError(
            f"params.context.result has {len(result)} regions; at most {n_max} regions are accepted "
            "(EDGESAM_MAX_CONTEXT_REGIONS)",
            413,
        )
    points = sum(1 for r in result if isinstance(r, dict) and r.get("type") == "keypointlabels")
    p_max = settings.max_prompt_points
    if points > p_max:
        raise Unprocessable(
            f"the prompt has {points} keypoints; at most {p_max} points per prompt are accepted "
            "(EDGESAM_MAX_PROMPT_POINTS)"
        )


async def run_cancellable(
    request: Request, fn: Callable[[Any], T], arg: Any, limiter: anyio.CapacityLimiter
) -> T:
    """``fn(arg)`` on a worker thread; when the client disconnects meanwhile, :func:`.budget.cancelled`
    turns true in that thread (the work stops at its next check) and the answer is discarded."""
    event = threading.Event()

    def work() -> T:
        with budget.cancel_on(event):
            return fn(arg)

    async def watch() -> None:
        while not event.is_set():
            if await request.is_disconnected():
                event.set()
                return
            await anyio.sleep(DISCONNECT_POLL_S)

    out: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            out["value"] = await anyio.to_thread.run_sync(work, limiter=limiter)
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            out["error"] = exc
        finally:
            tg.cancel_scope.cancel()
    if "error" in out:
        raise out["error"]
    return out["value"]
