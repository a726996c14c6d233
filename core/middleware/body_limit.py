"""Request bodies over ``MAX_REQUEST_BODY_BYTES`` (1 MB) answer 413 before any view reads them.

Views that take uploads declare their own limit with ``@max_body_size(n)`` (function views) or a
``max_body_size`` class attribute (DRF views and viewsets).
"""

from __future__ import annotations

from django.conf import settings
from django.urls import Resolver404, resolve

from core.errors.handlers import error_response

from .base import HybridMiddleware


def max_body_size(limit: int):
    """Decorator: let this view accept bodies up to ``limit`` bytes."""

    def decorate(view):
        view.max_body_size = limit
        return view

    return decorate


def _declared_limit(path: str) -> int | None:
    try:
        func = resolve(path).func
    except Resolver404:
        return None
    for holder in (func, getattr(func, "cls", None), getattr(func, "view_class", None)):
        limit = getattr(holder, "max_body_size", None)
        if limit is not None:
            return int(limit)
    return None


def _body_length(request) -> int:
    """Content-Length, or the size of an already-spooled chunked body (ASGI)."""
    raw = request.META.get("CONTENT_LENGTH")
    if raw:
        try:
            return int(raw)
        except ValueError:
            return 0
    stream = getattr(request, "_stream", None)
    if stream is not None and hasattr(stream, "seek") and hasattr(stream, "tell"):
        try:
            position = stream.tell()
            size = stream.seek(0, 2)
            stream.seek(position)
            return int(size)
        except (OSError, ValueError, TypeError):
            return 0
    return 0


class BodySizeLimitMiddleware(HybridMiddleware):
    """413 with the envelope when the body is over the limit of the endpoint it is aimed at."""

    def _too_large(self, request):
        size = _body_length(request)
        default = settings.MAX_REQUEST_BODY_BYTES
        if size <= default:
            return None
        limit = _declared_limit(request.path_info) or default
        if size <= limit:
            return None
        return error_response(
            413,
            message=f"The request body is {size} bytes; this endpoint accepts at most {limit}.",
            details={"limit_bytes": limit, "received_bytes": size},
            request=request,
        )

    def handle(self, request):
        return self._too_large(request) or self.get_response(request)

    async def ahandle(self, request):
        return self._too_large(request) or await self.get_response(request)
