"""Errors that a request can cause, each with its HTTP status and one sentence for the caller.

Scheduling code raises these; the API turns every one into `{"error": "..."}` with its status.
"""

from __future__ import annotations


class ApiError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    """A stale passkey, a state that no longer allows the action, a duplicate name."""

    status = 409


class RequestTimeout(ApiError):
    """A body that comes too slowly."""

    status = 408


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    status = 503
