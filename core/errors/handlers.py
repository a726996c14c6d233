"""One renderer for the error envelope: ``{"error": {"code", "message", "details"}}``.

Used by DRF (``api_exception_handler``), by Django's handler404/handler500/CSRF failure view, and by
the request middleware as a safety net for any other non-2xx answer under the API prefixes.

The OpenAI-compatible surface (``/v1/…``) answers in OpenAI's own error shape instead,
``{"error": {"message", "type", "param", "code"}}``, so that OpenAI's SDKs raise their proper
exception classes: a DRF view says so with ``error_format = "openai"``; answers made outside a view
(unknown routes, the body limit, the middleware safety net) go by the path prefix.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions as drf
from rest_framework.response import Response

from core.context import current_request_id
from core.registries import error_observers

from .exceptions import ApplicationError

logger = logging.getLogger("core.errors")

API_PREFIXES = ("/api/", "/v1/", "/mcp")
OPENAI_PREFIXES = ("/v1/",)
OPENAI_FORMAT = "openai"

STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("ERR_BAD_REQUEST", "The request could not be processed."),
    401: ("ERR_UNAUTHENTICATED", "Authentication credentials were not provided or are invalid."),
    402: ("ERR_PAYMENT_REQUIRED", "Payment is required."),
    403: ("ERR_PERMISSION_DENIED", "You do not have permission to perform this action."),
    404: ("ERR_NOT_FOUND", "Not found."),
    405: ("ERR_METHOD_NOT_ALLOWED", "Method not allowed."),
    406: ("ERR_NOT_ACCEPTABLE", "Cannot satisfy the request's Accept header."),
    409: ("ERR_CONFLICT", "The request conflicts with the current state."),
    413: ("ERR_PAYLOAD_TOO_LARGE", "The request body is too large."),
    415: ("ERR_UNSUPPORTED_MEDIA_TYPE", "Unsupported media type."),
    422: ("ERR_UNPROCESSABLE", "The request could not be processed."),
    429: ("ERR_RATE_LIMITED", "Too many requests."),
    500: ("ERR_INTERNAL", "Internal server error."),
    502: ("ERR_BAD_GATEWAY", "An upstream service failed."),
    503: ("ERR_UNAVAILABLE", "The service is temporarily unavailable."),
}


def notify_error_observers(request, exc: Exception, status: int, code: str) -> None:
    """Tell registered observers (e.g. the security-event recorder) about an error answer."""
    for observer in error_observers():
        try:
            observer(request, exc, status, code)
        except Exception:  # an observer must never turn an error answer into a 500
            logger.exception("error observer %r failed", observer)


def is_api_path(path: str) -> bool:
    """Whether answers under this path speak JSON and use the envelope."""
    return path.startswith(API_PREFIXES)


def is_openai_path(path: str) -> bool:
    """Whether answers under this path use OpenAI's error shape (the ``/v1/`` surface)."""
    return path.startswith(OPENAI_PREFIXES)


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of every error answer."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


# OpenAI's error ``type`` per status; anything else 4xx is an invalid request, 5xx a server error.
OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}
# Platform codes whose OpenAI counterpart clients already know by name.
OPENAI_CODES = {
    "ERR_AUTHENTICATION_FAILED": "invalid_api_key",
    "ERR_UNAUTHENTICATED": "invalid_api_key",
    "ERR_RATE_LIMITED": "rate_limit_exceeded",
}


def openai_envelope(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> dict:
    """OpenAI's error body: ``type`` from the status, ``code`` the platform code in snake case,
    ``param`` the first invalid field of a validation error."""
    kind = OPENAI_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    fields = (details or {}).get("fields")
    param = next(iter(fields), None) if isinstance(fields, dict) and fields else None
    openai_code = OPENAI_CODES.get(code) or code.removeprefix("ERR_").lower()
    return {"error": {"message": message, "type": kind, "param": param, "code": openai_code}}


def error_response(
    status: int,
    code: str | None = None,
    message: str | None = None,
    details: dict[str, Any] | None = None,
    *,
    request: HttpRequest | None = None,
) -> JsonResponse:
    """A plain Django JSON error answer, for code paths outside DRF (OpenAI's shape when
    ``request`` is on the OpenAI-compatible surface)."""
    default_code, default_message = STATUS_CODES.get(status, STATUS_CODES[500 if status >= 500 else 400])
    code, message = code or default_code, message or default_message
    if request is not None and is_openai_path(request.path):
        return JsonResponse(openai_envelope(status, code, message, details), status=status)
    return JsonResponse(envelope(code, message, details), status=status)


def _validation_message(detail: Any) -> str:
    """A one-line summary of DRF field errors: the first field and its first complaint."""
    if isinstance(detail, dict) and detail:
        field, errors = next(iter(detail.items()))
        first = errors[0] if isinstance(errors, list) and errors else errors
        if isinstance(first, dict):
            return f"{field}: {_validation_message(first)}"
        return f"{field}: {first}" if field != "non_field_errors" else str(first)
    if isinstance(detail, list) and detail:
        return str(detail[0])
    return "The request is not valid."


def _drf_error(exc: drf.APIException) -> tuple[int, str, str, dict[str, Any]]:
    """Status, code, message and details for one of DRF's own exceptions.

    A subclass may name its own code with an ``error_code`` attribute.
    """
    status = exc.status_code
    if error_code := getattr(exc, "error_code", None):
        return status, error_code, str(exc.detail), {}
    if isinstance(exc, drf.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return status, "ERR_VALIDATION", _validation_message(detail), {"fields": detail}
    if isinstance(exc, drf.ParseError):
        return status, "ERR_PARSE_ERROR", str(exc.detail), {}
    if isinstance(exc, drf.AuthenticationFailed):
        return 401, "ERR_AUTHENTICATION_FAILED", str(exc.detail), {}
    if isinstance(exc, drf.NotAuthenticated):
        return 401, "ERR_UNAUTHENTICATED", str(exc.detail), {}
    if isinstance(exc, drf.Throttled):
        return status, "ERR_RATE_LIMITED", "Too many requests.", {"retry_after": exc.wait}
    code, _ = STATUS_CODES.get(status, ("ERR_BAD_REQUEST", ""))
    return status, code, str(exc.detail), {}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """DRF's EXCEPTION_HANDLER: every exception of an API view becomes the envelope."""
    request = context.get("request")
    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        status, code, message, details = exc.status_code, exc.code, exc.message, exc.details
        headers.update(exc.headers)
    elif isinstance(exc, Http404):
        status, code, message, details = 404, "ERR_NOT_FOUND", "Not found.", {}
    elif isinstance(exc, PermissionDenied):
        status, (code, message), details = 403, STATUS_CODES[403], {}
    elif isinstance(exc, RequestDataTooBig):
        status, (code, message), details = 413, STATUS_CODES[413], {}
    elif isinstance(exc, drf.APIException):
        status, code, message, details = _drf_error(exc)
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(max(1, int(exc.wait + 0.999)))
    else:
        logger.exception(
            "unhandled error in %s %s",
            getattr(request, "method", "?"),
            getattr(request, "path", "?"),
        )
        status, (code, message) = 500, STATUS_CODES[500]
        details = {"request_id": current_request_id()}
    notify_error_observers(request, exc, status, code)
    view = context.get("view")
    if getattr(view, "error_format", None) == OPENAI_FORMAT or (
        request is not None and is_openai_path(request.path)
    ):
        return Response(openai_envelope(status, code, message, details), status=status, headers=headers)
    return Response(envelope(code, message, details), status=status, headers=headers)


# --- Django-level handlers (config.urls wires them) -----------------------------------------------


def handler404(request: HttpRequest, exception: Exception | None = None):
    """Unknown routes: the envelope under the API prefixes, Django's page elsewhere."""
    if is_api_path(request.path):
        return error_response(
            404, "ERR_ROUTE_NOT_FOUND", f"No route matches {request.path}.", request=request
        )
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest):
    """Uncaught errors (already logged by Django with the request id): never a traceback."""
    if is_api_path(request.path):
        return error_response(500, details={"request_id": current_request_id()}, request=request)
    from django.views.defaults import server_error

    return server_error(request)


def handler400(request: HttpRequest, exception: Exception | None = None):
    """Malformed requests (bad Host header, suspicious operations)."""
    if isinstance(exception, RequestDataTooBig):
        return error_response(413, request=request)
    if is_api_path(request.path):
        return error_response(400, request=request)
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None):
    """Permission denied outside DRF."""
    if is_api_path(request.path):
        return error_response(403, request=request)
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)


def csrf_failure(request: HttpRequest, reason: str = ""):
    """CSRF_FAILURE_VIEW: session writes without the token."""
    if is_api_path(request.path):
        return error_response(403, "ERR_CSRF_FAILED", f"CSRF check failed: {reason}", request=request)
    from django.views.csrf import csrf_failure as default

    return default(request, reason)
