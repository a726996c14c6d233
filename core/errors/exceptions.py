"""Exceptions that services raise; the exception handler renders each as the error envelope.

Apps subclass or instantiate these with their own codes (``ERR_USAGE_CAP_EXCEEDED``), so the
envelope never needs to import an app.
"""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A failure the client can act on: an HTTP status, a stable code and a human message."""

    status_code = 400
    code = "ERR_BAD_REQUEST"
    message = "The request could not be processed."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = details or {}
        self.status_code = status_code or self.status_code
        self.headers = headers or {}
        super().__init__(self.message)


class ValidationError(ApplicationError):
    """Input that breaks a business rule; field errors go in ``details``."""

    status_code = 400
    code = "ERR_VALIDATION"
    message = "The request is not valid."


class PermissionDeniedError(ApplicationError):
    """The caller is known but may not do this."""

    status_code = 403
    code = "ERR_PERMISSION_DENIED"
    message = "You do not have permission to perform this action."


class NotFoundError(ApplicationError):
    """The row does not exist for this tenant (other tenants' rows answer this too)."""

    status_code = 404
    code = "ERR_NOT_FOUND"
    message = "Not found."


class ConflictError(ApplicationError):
    """The request is valid but clashes with the current state (409)."""

    status_code = 409
    code = "ERR_CONFLICT"
    message = "The request conflicts with the current state."
