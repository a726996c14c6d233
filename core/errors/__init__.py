"""Domain errors and the envelope every non-2xx JSON answer of the API uses."""

from .exceptions import (
    ApplicationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    ValidationError,
)
from .handlers import api_exception_handler, envelope, error_response

__all__ = [
    "ApplicationError",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "ValidationError",
    "api_exception_handler",
    "envelope",
    "error_response",
]
