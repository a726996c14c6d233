"""The WebSocket RPC consumer at ``/ws``: frames in, answers and events out (API.md "WebSocket RPC").

A thin consumer, like a view: it authenticates (session cookie at connect, or a ``connect``
request with an API key), parses each frame, finds the method in ``core.rpc`` (chat registers its
own in ``chat.ws.methods``; other apps register theirs), re-checks the caller's access on every
call, runs the handler and answers. Every failure is an ``ok: false`` answer and the socket stays
open: a malformed frame (``ERR_BAD_FRAME``), a frame over ``WS_MAX_FRAME_BYTES``
(``ERR_FRAME_TOO_LARGE``), an unknown method, bad params, a missing permission, more than
``WS_MAX_IN_FLIGHT`` requests and streaming turns at once (``ERR_TOO_MANY_REQUESTS``).

Each request runs in its own task, so a slow call does not hold up the next frame, under
``core.context.channel_scope("ws")`` (usage records say ``ws``). An idle socket owns no task and
no channel-layer channel: only in-flight requests and spawned work (a streaming turn, a
subscription) do, and they are cancelled when the socket closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextvars import ContextVar
from importlib import import_module
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

import chat.ws.methods  # noqa: F401  (registers chat's RPC methods)
from chat.ws.auth import NotAuthenticated, Principal, check_access, principal_from_session, principal_refresh
from chat.ws.frames import (
    FrameTooLarge,
    TooManyRequests,
    UnknownMethod,
    answer_error,
    answer_ok,
    event_frame,
    id_of_oversized,
    parse_request,
)
from core import context
from core.errors import ApplicationError
from core.rpc import RpcCall, RpcMethod, get_rpc_method

logger = logging.getLogger(__name__)

# The answer gate of the request being served: work it spawns starts only once its answer is sent,
# so a client always reads ``ok`` before the first event of what it asked for.
_answer_gate: ContextVar[asyncio.Event | None] = ContextVar("ws_answer_gate", default=None)


class InternalError(ApplicationError):
    status_code = 500
    code = "ERR_INTERNAL"
    message = "Internal error."


def _session_store_class():
    return import_module(settings.SESSION_ENGINE).SessionStore


class RpcConsumer(AsyncWebsocketConsumer):
    """One WebSocket connection speaking the RPC protocol."""

    # No channel-layer channel per socket: an idle connection then costs no receive task and no
    # layer queue. Methods that follow a group open a ``core.realtime.Subscription`` in spawned work.
    channel_layer_alias = "__ws_rpc_has_no_channel__"

    principal: Principal | None = None

    # --- the connection --------------------------------------------------------------------------

    async def connect(self) -> None:
        self.principal = None
        self.session_error: ApplicationError | None = None
        self.seq = 0
        self.busy = 0  # limited requests + limited spawned work, against WS_MAX_IN_FLIGHT
        self.requests: set[asyncio.Task] = set()
        self.work: dict[str, asyncio.Task] = {}
        self.closed = False
        client = self.scope.get("client") or [None]
        self.client_ip = client[0]
        user = self.scope.get("user")
        if user is not None and getattr(user, "is_authenticated", False):
            try:
                self.principal = await database_sync_to_async(principal_from_session)(
                    user=user, session=self.scope.get("session"), org_id=self._requested_org()
                )
            except ApplicationError as exc:  # ?org= names an org the user is not in
                self.session_error = exc
        await self.accept()

    def _requested_org(self) -> str | None:
        query = parse_qs((self.scope.get("query_string") or b"").decode("latin1"))
        if query.get("org"):
            return query["org"][0]
        for name, value in self.scope.get("headers") or []:
            if name == b"x-org-id":
                return value.decode("latin1")
        return None

    async def disconnect(self, code: int) -> None:
        self.closed = True
        for task in [*self.requests, *self.work.values()]:
            task.cancel()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections (a thread hop) before every message; a frame does
        # its DB work through database_sync_to_async, which does that itself, so frames skip it.
        if message.get("type") == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    # --- what handlers see (core.rpc.RpcConnection) ----------------------------------------------

    @property
    def user(self) -> Any:
        return self.principal.user if self.principal else None

    @property
    def org(self) -> Any:
        return self.principal.org if self.principal else None

    @property
    def role(self) -> str | None:
        return self.principal.role if self.principal else None

    @property
    def api_key(self) -> Any:
        return self.principal.api_key if self.principal else None

    def authenticate(self, principal: Principal) -> None:
        """Make ``principal`` the caller of every later frame (the ``connect`` method)."""
        self.principal = principal
        self.session_error = None

    async def send_event(self, event: str, payload: dict[str, Any]) -> None:
        self.seq += 1
        await self._send(event_frame(event, payload, self.seq))

    def spawn(self, name: str, work, *, limited: bool = True) -> None:
        if name in self.work:
            work.close()
            raise ValueError(f"work {name!r} is already running on this connection")
        gate = _answer_gate.get()
        if limited:
            self.busy += 1

        async def run() -> None:
            try:
                if gate is not None:
                    await gate.wait()
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("websocket work %s failed", name)
            finally:
                self.work.pop(name, None)
                if limited:
                    self.busy -= 1

        self.work[name] = asyncio.create_task(run(), name=f"ws:{name}")

    def cancel(self, name: str) -> bool:
        task = self.work.get(name)
        if task is None:
            return False
        task.cancel()
        return True

    # --- frames ----------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        limit = settings.WS_MAX_FRAME_BYTES
        size = len(text_data) if text_data is not None else len(bytes_data or b"")
        if size > limit or (text_data is not None and len(text_data.encode("utf-8")) > limit):
            request_id = id_of_oversized(text_data) if text_data is not None else None
            await self._send(answer_error(request_id, FrameTooLarge(f"Frames are limited to {limit} bytes.")))
            return
        try:
            request = parse_request(text_data)
        except ApplicationError as exc:
            await self._send(answer_error(exc.details.get("id"), exc))
            return
        method = get_rpc_method(request.method)
        if method is None:
            await self._send(answer_error(request.id, UnknownMethod(f"Unknown method {request.method!r}.")))
            return
        if method.limited and self.busy >= settings.WS_MAX_IN_FLIGHT:
            error = TooManyRequests(
                f"At most {settings.WS_MAX_IN_FLIGHT} requests and streaming turns may run at once on "
                "one connection; wait for an answer (or a chat.done) first."
            )
            await self._send(answer_error(request.id, error))
            return
        if method.limited:
            self.busy += 1
        with context.channel_scope("ws") as ctx:
            ctx.ip = self.client_ip
            ctx.path = "/ws"
            ctx.api_key_id = self.principal.api_key.pk if self.principal and self.principal.api_key else None
            task = asyncio.create_task(self._serve(request.id, method, request.params), name="ws:request")
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)

    async def _serve(self, request_id: Any, method: RpcMethod, params: dict[str, Any]) -> None:
        gate = asyncio.Event()
        _answer_gate.set(gate)  # this task's own context: seen by the handler and what it spawns
        try:
            try:
                payload = await self._call(method, params, request_id)
                frame = answer_ok(request_id, payload)
            except ApplicationError as exc:
                frame = answer_error(request_id, exc)
            except Exception:
                logger.exception("websocket method %s failed", method.name)
                frame = answer_error(request_id, InternalError())
            finally:
                if method.limited:
                    self.busy -= 1
            await self._send(frame)
        finally:
            gate.set()

    async def _call(
        self, method: RpcMethod, params: dict[str, Any], request_id: Any
    ) -> dict[str, Any] | None:
        if not method.public:
            if self.principal is None:
                raise self.session_error or NotAuthenticated()
            if method.role is not None or method.scope_area is not None or method.staff_only:
                await self._refresh_principal()
                check_access(
                    self.principal,
                    role=method.role,
                    scope_area=method.scope_area,
                    write=method.write,
                    staff_only=method.staff_only,
                )
        return await method.handler(RpcCall(method=method, params=params, conn=self, request_id=request_id))

    async def _refresh_principal(self) -> None:
        """Re-read the caller's credential and role; a lost one signs the socket out."""
        principal = self.principal
        if principal is None:
            raise NotAuthenticated()
        store = _session_store_class() if principal.via == "session" else None
        try:
            fresh = await database_sync_to_async(principal_refresh)(principal, store)
        except ApplicationError:
            if self.principal is principal:
                self.principal = None
            raise
        if self.principal is principal:  # a concurrent connect may have replaced it meanwhile
            self.principal = fresh

    async def _send(self, frame: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            await self.send(text_data=json.dumps(frame, default=str, separators=(",", ":")))
        except Exception:  # the socket went away under us; disconnect() cleans up
            logger.debug("websocket send failed", exc_info=True)


__all__ = ["RpcConsumer"]
