"""API of the streaming turn: ``POST /api/v1/chat`` (SSE), following a turn from any process
(``GET /api/v1/chat/{message_id}/stream``), cancelling it and rating its answer.

The turn runs detached from the request (``chat.services.turns``): the SSE response of ``POST
/chat`` is just one follower. A client that goes away does not stop it unless the request said
``"on_disconnect": "cancel"``. Bad input and an unknown agent or conversation answer JSON errors
(400 / 404) before the stream starts; anything that goes wrong once the turn runs (no provider,
provider errors) arrives as the stream's ``error`` event, after ``message.start``, and is stored on
the assistant message (status ``failed``). Through an API key these need the ``chat`` scopes.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connections
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts.api.base import TenantAPIView
from accounts.models import ApiKey, Role
from agents.api.agents import JsonErrorsMixin, viewer_of
from agents.llm import on_short_lived_loop
from chat.selectors.messages import message_dict, turn_message_get
from chat.services import turns
from chat.services.feedback import feedback_upsert
from core import context as request_context
from core.errors import ApplicationError, ValidationError
from core.sse import KEEPALIVE, EventStreamRenderer, sse_frame, sse_response

from .own_thread import OwnThreadMixin
from .serializers import (
    ChatTurnInputSerializer,
    FeedbackInputSerializer,
    FeedbackOutputSerializer,
    TurnCancelOutputSerializer,
)

_TAGS = ["chat"]
CANCEL_WAIT_SECONDS = 3.0
_EVENTS_DOC = (
    "Server-sent events, each with an `id:` line (the turn's sequence number) and `event:`: "
    "`message.start {conversation_id, message_id}`, `message.delta {text}`, "
    "`tool.call {id, name, arguments}`, `tool.result {id, output | error}`, "
    "`citation {document_id, chunk_id, score}`, `usage {prompt_tokens, completion_tokens, cost_usd}`, "
    "`message.end {finish_reason}`, `error {code, message}`; the last is always `message.end` or "
    "`error`. Keep-alive comments while idle."
)


def _sse_ok(description: str) -> dict:
    return {(200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description=description)}


async def turn_frames(*, message_id, after_seq: int = 0, cancel_on_disconnect: bool = False):
    """SSE frames of a turn from ``after_seq`` on, with keep-alives; with ``cancel_on_disconnect``
    a client that goes away before the end cancels the turn."""
    from django.conf import settings

    # Under a server the view ran in a thread of its own that gave its connection back already
    # (``own_thread``); a sync caller's thread keeps its connection until the response ends: give it
    # back now (the stream itself reads through short-lived calls), or every open stream holds one.
    if on_short_lived_loop():
        await sync_to_async(connections.close_all)()
    finished = False
    try:
        async for event in turns.follow_turn(
            message_id=message_id, after_seq=after_seq, heartbeat=settings.SSE_KEEPALIVE_SECONDS
        ):
            if event is None:
                yield KEEPALIVE
                continue
            yield sse_frame(event.data, event=event.event, event_id=event.seq)
            if event.event in turns.TERMINAL_EVENTS:
                finished = True
    finally:
        if cancel_on_disconnect and not finished:
            turns.signal_local_cancel(message_id, "disconnected")


class ChatTurnView(OwnThreadMixin, JsonErrorsMixin, TenantAPIView):
    """``POST /api/v1/chat``: one streaming turn (in a worker thread of its own under ASGI:
    ``chat.api.own_thread``)."""

    write_role = Role.MEMBER
    scope_area = "chat"
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="chat_turn",
        tags=_TAGS,
        summary="One streaming turn with an agent (SSE).",
        description=(
            "Stores your message and the assistant's answer as it streams. `agent` is an agent id or key "
            "you may see (404 otherwise); `conversation_id` continues one of your conversations (404 "
            "otherwise), without it a new conversation is opened. 400 for a bad body. " + _EVENTS_DOC + " "
            "Failures once the turn runs (no provider: `ERR_NO_PROVIDER`; provider errors) arrive as the "
            "`error` event. The turn survives its client unless `on_disconnect` is `cancel`; follow it "
            "again with `GET /api/v1/chat/{message_id}/stream`. A turn that opens a conversation may "
            "answer before its rows are stored: a lookup of its ids (stream, cancel, feedback, the "
            "conversation) waits for them, and lists show them a few milliseconds later."
        ),
        request=ChatTurnInputSerializer,
        responses=_sse_ok("The turn's events."),
    )
    def post(self, request):
        body = ChatTurnInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        channel = "api" if isinstance(request.auth, ApiKey) else "console"
        request_context.set_channel(channel)
        agent = turns.resolve_agent(
            org=request.org, user=request.user, agent=data["agent"], viewer=viewer_of(request)
        )
        started = turns.start_turn(
            org=request.org,
            user=request.user,
            agent=agent,
            message=data["message"],
            conversation_id=data.get("conversation_id"),
            channel=channel,
            on_disconnect=data["on_disconnect"],
        )
        return _turn_response(started, data)

    loop_serializer_class = ChatTurnInputSerializer

    async def loop_post(self, request, data):
        """A valid turn through an API key, started on the loop (``chat.api.own_thread``): the
        agent is read from the cache on the loop, the turn started with ``astart_turn``. Anything it would
        refuse is left to :meth:`post` (nothing is written or started before it is refused)."""
        request_context.set_channel("api")
        try:
            agent = await turns.aresolve_agent(
                org=request.org, user=request.user, agent=data["agent"], viewer=viewer_of(request)
            )
            started = await turns.astart_turn(
                org=request.org,
                user=request.user,
                agent=agent,
                message=data["message"],
                conversation_id=data.get("conversation_id"),
                channel="api",
                on_disconnect=data["on_disconnect"],
            )
        except ApplicationError:
            return None
        return _turn_response(started, data)


def _turn_response(started, data: dict):
    frames = turn_frames(
        message_id=started.message_id, cancel_on_disconnect=data["on_disconnect"] == "cancel"
    )
    response = sse_response(frames, kind="chat")
    response["X-Conversation-Id"] = str(started.conversation_id)
    response["X-Message-Id"] = str(started.message_id)
    return response


def _after_seq(request) -> int:
    raw = request.query_params.get("after")
    if raw is None or raw == "":
        raw = request.headers.get("Last-Event-ID", "")
    raw = str(raw).strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(
            "after / Last-Event-ID must be a sequence number.", details={"after": ["A whole number ≥ 0."]}
        ) from None
    if value < 0:
        raise ValidationError("after must be ≥ 0.", details={"after": ["A whole number ≥ 0."]})
    return value


class TurnStreamView(OwnThreadMixin, JsonErrorsMixin, TenantAPIView):
    """``GET /api/v1/chat/{message_id}/stream``: follow a turn from any process."""

    read_role = Role.MEMBER
    scope_area = "chat"
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="chat_turn_stream",
        tags=_TAGS,
        summary="Replay a turn's events after Last-Event-ID (or ?after=), then follow it live.",
        description=(
            "Works from any web process, with no gap and no repeat; a finished turn replays and ends. "
            + _EVENTS_DOC
        ),
        parameters=[
            OpenApiParameter("after", int, description="Replay events after this sequence number."),
            OpenApiParameter("Last-Event-ID", str, location=OpenApiParameter.HEADER, required=False),
        ],
        responses=_sse_ok("The turn's events after the given sequence number."),
    )
    def get(self, request, message_id):
        after = _after_seq(request)
        message = turn_message_get(org=request.org, user=request.user, message_id=message_id)
        return sse_response(turn_frames(message_id=message.pk, after_seq=after), kind="chat")


class TurnCancelView(TenantAPIView):
    """``POST /api/v1/chat/{message_id}/cancel``."""

    write_role = Role.MEMBER
    scope_area = "chat"

    @extend_schema(
        operation_id="chat_turn_cancel",
        tags=_TAGS,
        summary="Stop a running turn (from any process); 409 ERR_TURN_FINISHED when it has finished.",
        description=(
            "The partial answer is kept with status `cancelled`. Answers the message once the turn has "
            "stopped (or, after a few seconds, as it is, still `streaming` while it stops)."
        ),
        request=None,
        responses=TurnCancelOutputSerializer,
    )
    def post(self, request, message_id):
        message = turns.turn_cancel(
            org=request.org, user=request.user, message_id=message_id, wait_seconds=CANCEL_WAIT_SECONDS
        )
        return Response({"message": message_dict(message)})


class FeedbackView(TenantAPIView):
    """``POST /api/v1/chat/{message_id}/feedback``: your thumbs up or down (replaces your last one)."""

    write_role = Role.MEMBER
    scope_area = "chat"

    @extend_schema(
        operation_id="chat_feedback",
        tags=_TAGS,
        summary="Rate an assistant message up or down, with an optional comment (one per user).",
        description=(
            "201 the first time, 200 when it replaces your earlier feedback; 400 for a non-assistant message."
        ),
        request=FeedbackInputSerializer,
        responses={201: FeedbackOutputSerializer, 200: FeedbackOutputSerializer},
    )
    def post(self, request, message_id):
        message = turn_message_get(org=request.org, user=request.user, message_id=message_id)
        body = FeedbackInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        feedback, created = feedback_upsert(
            message=message,
            user=request.user,
            rating=body.validated_data["rating"],
            comment=body.validated_data.get("comment", ""),
        )
        return Response(
            FeedbackOutputSerializer(feedback).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
