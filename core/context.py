"""Per-request context (request id, org, actor) kept in contextvars, so log lines and errors
anywhere below a request can name it without passing the request around."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

_request_id: ContextVar[str] = ContextVar("request_id", default="-")

# A client-supplied id is echoed only when it is short and plain.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")


def new_request_id(client_value: str | None = None) -> str:
    """The client's X-Request-Id when it is sane, else a fresh one."""
    if client_value and _SANE_REQUEST_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex


def set_request_id(value: str):
    """Bind the request id to the current context; returns the token to reset it."""
    return _request_id.set(value)


def reset_request_id(token) -> None:
    """Restore the previous request id (end of request)."""
    _request_id.reset(token)


def current_request_id() -> str:
    """The id of the request being served, or '-' outside one (Celery, commands)."""
    return _request_id.get()
