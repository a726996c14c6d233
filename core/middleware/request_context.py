"""Outermost middleware: request id, one JSON access-log line, request metrics, and the error
envelope as a safety net for any non-JSON error answer under the API prefixes."""

from __future__ import annotations

import logging
import time

from django.http import HttpResponseBase

from core import metrics
from core.context import bind_request, new_request_id, unbind
from core.errors.handlers import error_response, is_api_path

from .base import HybridMiddleware

access_log = logging.getLogger("core.access")

# Headers that keep their meaning when an error answer is rewritten into the envelope.
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate", "Vary")


def _actor_label(request) -> str | None:
    """Who made the request, without forcing a lazy session lookup in async code."""
    key = getattr(request, "auth", None)
    if key is not None and getattr(key, "pk", None) is not None:
        return f"key:{key.pk}"
    user = request.__dict__.get("user")
    user = getattr(user, "_wrapped", user)  # an unevaluated SimpleLazyObject stays unknown
    if getattr(user, "is_authenticated", False) is True:
        return f"user:{user.pk}"
    return None


def _route_label(request) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else "unmatched"


class RequestContextMiddleware(HybridMiddleware):
    """Binds the request id first, so every log line of the request carries it."""

    def _begin(self, request):
        request_id = new_request_id(request.headers.get("X-Request-Id"))
        request.request_id = request_id
        return bind_request(request, request_id), time.perf_counter()

    def _finish(self, request, response: HttpResponseBase, started: float) -> HttpResponseBase:
        if (
            response.status_code >= 400
            and is_api_path(request.path)
            and not response.streaming
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            replacement = error_response(response.status_code, request=request)
            for header in _KEPT_HEADERS:
                if header in response:
                    replacement[header] = response[header]
            response = replacement
        response["X-Request-Id"] = request.request_id
        duration = time.perf_counter() - started
        route = _route_label(request)
        metrics.observe_request(request.method, route, response.status_code, duration)
        org = getattr(request, "org", None)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": response.status_code,
                "duration_ms": round(duration * 1000, 2),
                "org": str(org.pk) if org is not None else None,
                "actor": _actor_label(request),
            },
        )
        return response

    def handle(self, request):
        token, started = self._begin(request)
        try:
            return self._finish(request, self.get_response(request), started)
        finally:
            unbind(token)

    async def ahandle(self, request):
        token, started = self._begin(request)
        try:
            return self._finish(request, await self.get_response(request), started)
        finally:
            unbind(token)
