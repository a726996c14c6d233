"""Chat's WebSocket RPC methods, registered in ``core.rpc`` when this module is imported (the
consumer imports it): ``connect``, ``ping``, ``chat.*``, ``sessions.*`` and ``agents.list``.

Handlers are thin like views: validate params with a serializer, call a selector or service
(through ``database_sync_to_async``), shape the payload. The consumer has already checked the
method's role and key scope for this very call; row access (the caller's own conversations, the
agents they may see) is the selectors' job, so another org's or user's id answers ``ERR_NOT_FOUND``.

``chat.send`` answers as soon as the turn is accepted (``{conversation_id, message_id}``), then
forwards the turn's events (``chat.services.turns.aturn_events``) as ``chat.delta``,
``chat.tool_call``, ``chat.tool_result``, ``chat.citation`` and finally ``chat.done`` or
``chat.error``, each payload naming its ``conversation_id`` and ``message_id``.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any

from channels.db import database_sync_to_async
from rest_framework import serializers

from accounts.models import Role
from agents.selectors.agents import AgentViewer, agent_get, agent_list, agent_online
from chat.models.conversations import Channel
from chat.selectors.conversations import conversation_get, conversation_list, message_history
from chat.services.conversations import conversation_delete, conversation_reset, conversation_update
from chat.services.turns import acancel_turn, astart_turn, aturn_events
from chat.ws.auth import NotAuthenticated, Principal, principal_from_key
from chat.ws.frames import validate_params
from chat.ws.reads import conversation_dict, conversation_preview
from core.errors import ApplicationError, NotFoundError
from core.rpc import RpcCall, register_rpc_method

MAX_LIST_LIMIT = 200

# Turn events (SSE names of the chat core) → WebSocket event names; ``message.start`` is the
# ``ok`` answer of chat.send, and ``usage`` is folded into ``chat.done``.
TURN_EVENTS = {
    "message.delta": "chat.delta",
    "tool.call": "chat.tool_call",
    "tool.result": "chat.tool_result",
    "citation": "chat.citation",
    "message.end": "chat.done",
    "error": "chat.error",
}


# --- params ------------------------------------------------------------------------------------


class WsConnectParams(serializers.Serializer):
    token = serializers.CharField(required=False, allow_blank=False, trim_whitespace=True, max_length=200)


class WsPageParams(serializers.Serializer):
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST_LIMIT, default=50)
    offset = serializers.IntegerField(required=False, min_value=0, default=0)


class WsAgentListParams(WsPageParams):
    q = serializers.CharField(required=False, allow_blank=True, max_length=200)


class WsSessionListParams(WsPageParams):
    archived = serializers.BooleanField(required=False, allow_null=True, default=None)
    agent = serializers.UUIDField(required=False, allow_null=True, default=None)
    q = serializers.CharField(required=False, allow_blank=True, max_length=200)


class WsConversationParams(serializers.Serializer):
    conversation_id = serializers.UUIDField()


class WsPreviewParams(WsConversationParams):
    limit = serializers.IntegerField(required=False, min_value=1, max_value=50, default=5)


class WsPatchParams(WsConversationParams):
    title = serializers.CharField(required=False, allow_blank=True, max_length=200)
    archived = serializers.BooleanField(required=False)

    def validate(self, attrs):
        if "title" not in attrs and "archived" not in attrs:
            raise serializers.ValidationError("Give title and/or archived.")
        return attrs


class WsHistoryParams(WsConversationParams):
    cursor = serializers.CharField(required=False, allow_blank=True, max_length=500)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200, default=50)


class WsSendParams(serializers.Serializer):
    agent = serializers.CharField(max_length=200)
    message = serializers.CharField(max_length=100_000, trim_whitespace=False)
    conversation_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    on_disconnect = serializers.ChoiceField(
        choices=["continue", "cancel"], required=False, default="continue"
    )


class WsAbortParams(serializers.Serializer):
    message_id = serializers.UUIDField()


# --- helpers -----------------------------------------------------------------------------------


def _principal(call: RpcCall) -> Principal:
    principal = getattr(call.conn, "principal", None)
    if principal is None:
        raise NotAuthenticated()
    return principal


def _viewer(principal: Principal) -> AgentViewer:
    return AgentViewer(user=principal.user, role=principal.role, bound_agent_id=principal.bound_agent_id)


def _agent_dict(agent) -> dict[str, Any]:
    return {
        "id": str(agent.pk),
        "key": agent.key,
        "name": agent.name,
        "description": agent.description,
        "model": agent.model,
        "visibility": agent.visibility,
        "status": agent.status,
        "online": agent_online(agent),
    }


def _resolve_agent(*, principal: Principal, ref: str):
    """The agent ``ref`` (id or key) names, if the caller may see it (an agent key: its own only)."""
    import uuid

    viewer = _viewer(principal)
    ref = ref.strip()
    try:
        agent_id = uuid.UUID(ref)
    except ValueError:
        found = agent_list(org=principal.org, viewer=viewer).filter(key=ref).first()
        if found is None:
            raise NotFoundError("Agent not found.") from None
        return found
    return agent_get(org=principal.org, viewer=viewer, agent_id=agent_id)


# --- connection --------------------------------------------------------------------------------


async def rpc_connect(call: RpcCall) -> dict[str, Any]:
    """Authenticate with an API key (``{token}``), or confirm the session the socket opened with."""
    params = validate_params(WsConnectParams, call.params)
    if params.get("token"):
        principal = await database_sync_to_async(principal_from_key)(params["token"])
        call.conn.authenticate(principal)
        return principal.summary()
    principal = getattr(call.conn, "principal", None)
    if principal is None:
        raise NotAuthenticated('Send {"token": "<API key>"}, or open the socket with a signed-in session.')
    return principal.summary()


async def rpc_ping(call: RpcCall) -> dict[str, Any]:
    """``{pong: true, ts}``: ``ts`` is the server's clock in milliseconds since the epoch."""
    return {"pong": True, "ts": int(time.time() * 1000)}


# --- agents ------------------------------------------------------------------------------------


def _agents_page(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    agents = agent_list(org=principal.org, viewer=_viewer(principal), search=params.get("q") or None)
    total = agents.count()
    page = agents[params["offset"] : params["offset"] + params["limit"]]
    return {
        "items": [_agent_dict(agent) for agent in page],
        "total": total,
        "limit": params["limit"],
        "offset": params["offset"],
    }


async def rpc_agents_list(call: RpcCall) -> dict[str, Any]:
    """The agents the caller may see (an agent key: its own), ``{items, total, limit, offset}``."""
    params = validate_params(WsAgentListParams, call.params)
    return await database_sync_to_async(_agents_page)(_principal(call), params)


# --- sessions (conversations) --------------------------------------------------------------------


def _sessions_page(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversations = conversation_list(
        org=principal.org,
        user=principal.user,
        archived=params.get("archived"),
        agent_id=params.get("agent"),
        search=params.get("q") or None,
    )
    total = conversations.count()
    page = conversations[params["offset"] : params["offset"] + params["limit"]]
    return {
        "items": [conversation_dict(c) for c in page],
        "total": total,
        "limit": params["limit"],
        "offset": params["offset"],
    }


async def rpc_sessions_list(call: RpcCall) -> dict[str, Any]:
    """The caller's conversations, newest first; ``archived``, ``agent``, ``q``, ``limit``/``offset``."""
    params = validate_params(WsSessionListParams, call.params)
    return await database_sync_to_async(_sessions_page)(_principal(call), params)


def _preview(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversation = conversation_get(
        org=principal.org, user=principal.user, conversation_id=params["conversation_id"]
    )
    return {
        "conversation": conversation_dict(conversation),
        "messages": conversation_preview(conversation=conversation, limit=params["limit"]),
    }


async def rpc_sessions_preview(call: RpcCall) -> dict[str, Any]:
    """One conversation and its last few messages (``limit``, default 5), oldest of them first."""
    params = validate_params(WsPreviewParams, call.params)
    return await database_sync_to_async(_preview)(_principal(call), params)


def _patch(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversation = conversation_get(
        org=principal.org, user=principal.user, conversation_id=params["conversation_id"]
    )
    updated = conversation_update(
        conversation=conversation,
        actor=principal.user,
        title=params.get("title"),
        archived=params.get("archived"),
    )
    return conversation_dict(updated)


async def rpc_sessions_patch(call: RpcCall) -> dict[str, Any]:
    """Rename (``title``) and/or archive or unarchive (``archived``) a conversation."""
    params = validate_params(WsPatchParams, call.params)
    return await database_sync_to_async(_patch)(_principal(call), params)


def _delete(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversation = conversation_get(
        org=principal.org, user=principal.user, conversation_id=params["conversation_id"]
    )
    conversation_delete(conversation=conversation, actor=principal.user)
    return {"conversation_id": str(params["conversation_id"]), "deleted": True}


async def rpc_sessions_delete(call: RpcCall) -> dict[str, Any]:
    """Delete a conversation and its messages."""
    params = validate_params(WsConversationParams, call.params)
    return await database_sync_to_async(_delete)(_principal(call), params)


def _reset(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversation = conversation_get(
        org=principal.org, user=principal.user, conversation_id=params["conversation_id"]
    )
    return conversation_dict(conversation_reset(conversation=conversation, actor=principal.user))


async def rpc_sessions_reset(call: RpcCall) -> dict[str, Any]:
    """Clear a conversation's messages and keep the conversation."""
    params = validate_params(WsConversationParams, call.params)
    return await database_sync_to_async(_reset)(_principal(call), params)


def _history(principal: Principal, params: dict[str, Any]) -> dict[str, Any]:
    conversation = conversation_get(
        org=principal.org, user=principal.user, conversation_id=params["conversation_id"]
    )
    return message_history(
        conversation=conversation, cursor=params.get("cursor") or None, limit=params["limit"]
    )


async def rpc_chat_history(call: RpcCall) -> dict[str, Any]:
    """``{messages, next_cursor, total, reset}``, as ``GET /api/v1/conversations/{id}/messages``."""
    params = validate_params(WsHistoryParams, call.params)
    return await database_sync_to_async(_history)(_principal(call), params)


# --- chat turns --------------------------------------------------------------------------------


async def _forward_turn(
    call: RpcCall, *, principal: Principal, message_id, conversation_id, on_disconnect: str
):
    """Send the turn's events to the socket until its last one; the socket closing stops only the
    forwarding (the turn goes on and is stored), unless the request said ``on_disconnect: cancel``."""
    ids = {"conversation_id": str(conversation_id), "message_id": str(message_id)}
    usage: dict[str, Any] | None = None
    try:
        async with aclosing(aturn_events(message_id=message_id)) as events:
            async for event in events:
                if event.event == "usage":
                    usage = dict(event.data)
                    continue
                name = TURN_EVENTS.get(event.event)
                if name is None:
                    continue
                payload = {**event.data, **ids}
                if name == "chat.done":
                    payload["usage"] = usage
                await call.conn.send_event(name, payload)
                if name in ("chat.done", "chat.error"):
                    return
        # The log ended without a last event: the conversation was deleted while the turn ran.
        await call.conn.send_event(
            "chat.error", {"code": "ERR_TURN_LOST", "message": "The turn ended without finishing.", **ids}
        )
    except asyncio.CancelledError:
        if on_disconnect == "cancel":
            await asyncio.shield(_cancel_quietly(principal, message_id))
        raise
    except ApplicationError as exc:
        await call.conn.send_event("chat.error", {"code": exc.code, "message": exc.message, **ids})


async def _cancel_quietly(principal: Principal, message_id) -> None:
    try:
        await acancel_turn(org=principal.org, user=principal.user, message_id=message_id)
    except ApplicationError:
        pass  # finished meanwhile, or gone


async def rpc_chat_send(call: RpcCall) -> dict[str, Any]:
    """Start a turn: answers ``{conversation_id, message_id, user_message_id}`` once it is accepted,
    then streams its events (see the module doc)."""
    params = validate_params(WsSendParams, call.params)
    principal = _principal(call)
    agent = await database_sync_to_async(_resolve_agent)(principal=principal, ref=params["agent"])
    started = await astart_turn(
        org=principal.org,
        user=principal.user,
        agent=agent,
        message=params["message"],
        conversation_id=params.get("conversation_id"),
        channel=Channel.WS,
        on_disconnect=params["on_disconnect"],
    )
    call.conn.spawn(
        f"turn:{started.message_id}",
        _forward_turn(
            call,
            principal=principal,
            message_id=started.message_id,
            conversation_id=started.conversation_id,
            on_disconnect=params["on_disconnect"],
        ),
    )
    return {
        "conversation_id": str(started.conversation_id),
        "message_id": str(started.message_id),
        "user_message_id": str(started.user_message_id),
    }


async def rpc_chat_abort(call: RpcCall) -> dict[str, Any]:
    """Stop a running turn of the caller's (from any process); its events end with ``chat.done``
    (``finish_reason`` says why) and the partial answer is kept. 409 ``ERR_TURN_FINISHED`` when done."""
    params = validate_params(WsAbortParams, call.params)
    principal = _principal(call)
    await acancel_turn(org=principal.org, user=principal.user, message_id=params["message_id"])
    return {"message_id": str(params["message_id"]), "cancelled": True}


# --- registration ------------------------------------------------------------------------------

register_rpc_method(
    "connect", rpc_connect, public=True, limited=False, description="Authenticate with an API key."
)
register_rpc_method("ping", rpc_ping, limited=False, description="Liveness: {pong, ts}.")
register_rpc_method("agents.list", rpc_agents_list, role=Role.VIEWER, scope_area="agents")
register_rpc_method("sessions.list", rpc_sessions_list, role=Role.MEMBER, scope_area="conversations")
register_rpc_method("sessions.preview", rpc_sessions_preview, role=Role.MEMBER, scope_area="conversations")
register_rpc_method(
    "sessions.patch", rpc_sessions_patch, role=Role.MEMBER, scope_area="conversations", write=True
)
register_rpc_method(
    "sessions.delete", rpc_sessions_delete, role=Role.MEMBER, scope_area="conversations", write=True
)
register_rpc_method(
    "sessions.reset", rpc_sessions_reset, role=Role.MEMBER, scope_area="conversations", write=True
)
register_rpc_method("chat.history", rpc_chat_history, role=Role.MEMBER, scope_area="conversations")
register_rpc_method("chat.send", rpc_chat_send, role=Role.MEMBER, scope_area="chat", write=True)
register_rpc_method(
    "chat.abort", rpc_chat_abort, role=Role.MEMBER, scope_area="chat", write=True, limited=False
)
