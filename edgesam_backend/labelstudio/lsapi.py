"""Calls from this backend to Label Studio's REST API: storing predictions computed in the background
(``POST /api/predictions``), and reading a project's tasks (for ``edgesam precompute``) and
submitted annotations (for training).

Only the configured address and key are used (``LABEL_STUDIO_URL`` + ``LABEL_STUDIO_API_KEY``), never
the ``hostname``/``access_token`` that ``/setup`` sends: a request body must not be able to point the
backend's credentials at another host. A Personal Access Token is exchanged as for image downloads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx

from .images import LabelStudioAuth

log = logging.getLogger("edgesam_backend.labelstudio")


class LabelStudioAPIError(RuntimeError):
    """Label Studio could not be reached or refused a call."""


class LabelStudioAPI:
    """A small Label Studio client on an existing ``httpx.Client``.

    Args:
        base_url: Label Studio's address (``http://host:8080``), None when not configured.
        api_key: legacy token or Personal Access Token.
        client: the HTTP client (the image fetcher's; tests give it a mock transport).
        timeout: seconds per call.
    """

    def __init__(
        self, base_url: str | None, api_key: str | None, client: httpx.Client, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.client = client
        self.timeout = timeout
        self.auth = LabelStudioAuth(api_key, client, timeout)
        self.configured = bool(self.base_url and api_key)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if not self.configured:
            raise LabelStudioAPIError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not both set")
        url = f"{self.base_url}{path}"
        for attempt in range(2):
            try:
                r = self.client.request(
                    method, url, headers=self.auth.headers(self.base_url or ""), timeout=self.timeout, **kw
                )
            except httpx.HTTPError as exc:
                raise LabelStudioAPIError(f"{method} {url}: {exc}") from None
            if r.status_code == 401 and attempt == 0 and self.auth.is_pat:
                self.auth.invalidate()  # an expired access token: exchange again once
                continue
            if r.status_code >= 400:
                raise LabelStudioAPIError(f"{method} {url} -> {r.status_code}: {r.text[:300]}")
            return r
        raise AssertionError("unreachable")

    def post_prediction(self, task_id: int, prediction: dict[str, Any]) -> int:
        """Store one prediction (``{"result", "score", "model_version"}``) for a task; its id."""
        body = {
            "task": task_id,
            "result": prediction["result"],
            "score": prediction.get("score", 0.0),
            "model_version": prediction["model_version"],
        }
        data = self._call("POST", "/api/predictions/", json=body).json()
        return int(data.get("id", 0)) if isinstance(data, dict) else 0

    def project(self, project: int) -> dict[str, Any]:
        """``GET /api/projects/{id}`` (its ``label_config`` among others)."""
        data = self._call("GET", f"/api/projects/{int(project)}").json()
        if not isinstance(data, dict):
            raise LabelStudioAPIError(f"project {project}: unexpected answer {str(data)[:200]}")
        return data

    def tasks(self, project: int, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every task of a project (``data``, ``annotations``, ``predictions`` expanded)."""
        page = 1
        while True:
            try:
                r = self._call(
                    "GET",
                    "/api/tasks",
                    params={"project": project, "page": page, "page_size": page_size, "fields": "all"},
                )
            except LabelStudioAPIError as exc:
                if page > 1 and "-> 404" in str(exc):  # past the last page
                    return
                raise
            body = r.json()
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1
