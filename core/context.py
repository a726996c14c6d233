"""Per-request context (request id, client IP, user agent) kept in contextvars, so log lines,
audit rows and errors anywhere below a request can name it without passing the request around.
Services never see a request object; they read this instead."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings


@dataclass
class RequestContext:
    """What is known about the request being served. ``api_key_id`` is filled in by the
    authentication layer once it knows the credential."""

    request_id: str = "-"
    ip: str | None = None
    user_agent: str = ""
    path: str = ""
    api_key_id: object | None = None
    channel: str = ""


_OUTSIDE_REQUEST = RequestContext()
_context: ContextVar[RequestContext] = ContextVar("request_context", default=_OUTSIDE_REQUEST)

# A client-supplied id is echoed only when it is short and plain.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")


def new_request_id(client_value: str | None = None) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    if client_value and _SANE_REQUEST_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex


def client_ip(request) -> str | None:
    """The caller's IP: REMOTE_ADDR, or the right hop of X-Forwarded-For behind NUM_PROXIES."""
    num_proxies = settings.REST_FRAMEWORK.get("NUM_PROXIES")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR")
    if num_proxies and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(num_proxies, len(hops))]
    return request.META.get("REMOTE_ADDR") or None


def bind_request(request, request_id: str):
    """Bind the request's context; returns the token that :func:`unbind` takes."""
    return _context.set(
        RequestContext(
            request_id=request_id,
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:400],
            path=request.path[:500],
        )
    )


def unbind(token) -> None:
    """Restore the previous context (end of request)."""
    _context.reset(token)


def current() -> RequestContext:
    """The context of the request being served (defaults outside one: Celery, commands)."""
    return _context.get()


def set_channel(channel: str) -> None:
    """Name the surface serving this request (console, api, openai, ws, cron, webhook) so usage
    records can say where a call came from; outside a request, use :func:`channel_scope`."""
    ctx = _context.get()
    if ctx is not _OUTSIDE_REQUEST:
        ctx.channel = channel


@contextmanager
def channel_scope(channel: str, *, request_id: str | None = None) -> Iterator[RequestContext]:
    """A context for work outside an HTTP request (a WebSocket frame, a cron job, a Celery task)."""
    token = _context.set(RequestContext(request_id=request_id or uuid.uuid4().hex, channel=channel))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def adopt(channel: str, *, request_id: str | None = None, api_key_id=None) -> None:
    """Bind a fresh context for the rest of the current task: for a stream's body, which is sent
    after the request's middleware has unbound the request's own context, in the same task."""
    _context.set(
        RequestContext(request_id=request_id or uuid.uuid4().hex, channel=channel, api_key_id=api_key_id)
    )


def note_api_key(key_id) -> None:
    """Record the API key the request authenticated with (for audit rows and logs)."""
    ctx = _context.get()
    if ctx is not _OUTSIDE_REQUEST:
        ctx.api_key_id = key_id


def current_request_id() -> str:
    """The id of the request being served, or '-' outside one."""
    return _context.get().request_id
