"""Client-facing errors: each carries the HTTP status and a message the API returns as ``detail``."""

from __future__ import annotations


class BackendError(Exception):
    """An error answered with ``status`` and ``{"detail": message}``."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(BackendError):
    status = 400


class Unprocessable(BackendError):
    """The request is well-formed JSON but its content cannot be served (422)."""

    status = 422


class ImageFetchError(BackendError):
    """The task's image could not be obtained (blocked, unreachable, too large, not an image)."""

    status = 424
