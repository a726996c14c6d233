"""A registry of realtime RPC methods: what a WebSocket client may call, and who may call it.

The WebSocket consumer lives in `chat`, yet other apps offer methods on the same socket
(``boards.subscribe``, ``logs.tail``). `core` imports no app, so the methods come to the consumer
the other way round: each app calls :func:`register_rpc_method` (from its ``AppConfig.ready()``, or
a module the consumer imports) and the consumer looks a frame's ``method`` up here.

A method declares what it needs and the consumer enforces it before the handler runs, on every
call: ``public`` (callable before authentication, e.g. ``connect``), ``staff_only``, the least org
``role`` and the key ``scope_area`` with ``write`` (the same names as ``accounts.scopes``). A
handler gets an :class:`RpcCall` and returns the JSON-serialisable ``payload`` of the ``ok``
answer; it raises ``core.errors.ApplicationError`` (or a subclass) to answer ``ok: false`` with
that error's code. Handlers that keep working after they answer (a streaming chat turn, a
subscription) run that work through :meth:`RpcConnection.spawn`, so that it is counted against the
connection's in-flight limit and cancelled when the socket closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

RpcHandler = Callable[["RpcCall"], Awaitable[dict[str, Any] | None]]


class RpcConnection(Protocol):
    """What a handler may use of the socket it serves (implemented by the chat consumer)."""

    user: Any  # the authenticated user (None before authentication)
    org: Any  # the organisation the connection acts in
    role: str | None  # the effective org role, re-read for this call
    api_key: Any  # the ApiKey row for key connections, else None

    async def send_event(self, event: str, payload: dict[str, Any]) -> None:
        """Send ``{"type": "event", "event", "payload", "seq"}`` with the next per-connection seq."""
        ...

    def spawn(self, name: str, work: Coroutine[Any, Any, Any], *, limited: bool = True) -> None:
        """Run ``work`` after the answer, owned by the connection (cancelled when it closes).

        ``name`` identifies it for :meth:`cancel` (a second ``spawn`` with a live name replaces
        nothing: it raises ``ValueError``). ``limited`` work counts against the in-flight limit.
        """
        ...

    def cancel(self, name: str) -> bool:
        """Cancel the spawned work called ``name``; False when there is none."""
        ...


@dataclass(frozen=True)
class RpcMethod:
    """One registered method and the access it needs."""

    name: str
    handler: RpcHandler
    staff_only: bool = False
    public: bool = False
    role: str | None = None
    scope_area: str | None = None
    write: bool = False
    limited: bool = True
    description: str = ""


@dataclass
class RpcCall:
    """One request frame being served: the method, its params, the connection and the client id."""

    method: RpcMethod
    params: dict[str, Any]
    conn: RpcConnection
    request_id: str
    extra: dict[str, Any] = field(default_factory=dict)


_methods: dict[str, RpcMethod] = {}


def register_rpc_method(
    name: str,
    handler: RpcHandler,
    *,
    staff_only: bool = False,
    public: bool = False,
    role: str | None = None,
    scope_area: str | None = None,
    write: bool = False,
    limited: bool = True,
    description: str = "",
) -> RpcHandler:
    """Offer ``name`` on the WebSocket RPC socket; returns ``handler`` (usable as a decorator body).

    ``role`` is the least org role (``"VIEWER"`` … ``"OWNER"``); ``scope_area`` + ``write`` is what
    an API key with scopes must cover. ``limited=False`` exempts cheap control methods (``ping``,
    ``chat.abort``) from the in-flight limit, so a client at its limit can still stop its work.
    Registering the same name twice with another handler is a programming error.
    """
    if not name or name.strip() != name:
        raise ValueError(f"bad RPC method name {name!r}")
    existing = _methods.get(name)
    if existing is not None and existing.handler is not handler:
        raise ValueError(f"RPC method {name!r} is already registered")
    _methods[name] = RpcMethod(
        name=name,
        handler=handler,
        staff_only=staff_only,
        public=public,
        role=role,
        scope_area=scope_area,
        write=write,
        limited=limited,
        description=description,
    )
    return handler


def rpc_method(name: str, **options: Any) -> Callable[[RpcHandler], RpcHandler]:
    """Decorator flavour: ``@rpc_method("boards.subscribe", role="VIEWER", scope_area="boards")``."""

    def decorate(handler: RpcHandler) -> RpcHandler:
        return register_rpc_method(name, handler, **options)

    return decorate


def get_rpc_method(name: str) -> RpcMethod | None:
    """The method registered under ``name``, if any."""
    return _methods.get(name)


def rpc_method_names() -> list[str]:
    """Every registered method name, sorted."""
    return sorted(_methods)


def unregister_rpc_method(name: str) -> None:
    """Forget ``name`` (tests that register throwaway methods clean up with this)."""
    _methods.pop(name, None)
