"""Errors the HTTP layer answers with a status code and a JSON message."""

from __future__ import annotations

from imgproc.errors import ImgprocError


class ApiError(ImgprocError):
    """A request the server refuses; `status` is the HTTP status of the JSON answer."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class TooLarge(ApiError):
    """An upload above the size limit (413)."""

    status = 413


class NotAnImage(ApiError):
    """An upload whose bytes are no image format Pillow knows (415)."""

    status = 415


class Busy(ApiError):
    """The queue is full (429) or the server is stopping (503); says when to come back."""

    def __init__(self, message: str, *, retry_after: int, status: int = 429) -> None:
        super().__init__(message, status=status, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after
