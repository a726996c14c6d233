"""The OpenAI-compatible surface under ``/v1/``: chat completions, responses and models, so that
OpenAI's SDKs and tools work against the platform with an API key as ``api_key``.

- ``POST /v1/chat/completions`` and ``POST /v1/responses`` (MEMBER, ``chat`` scope): ``model`` is
  ``agent:<key>`` (the agent runs) or a provider model name (see ``chat.services.openai_compat``
  for who may call one); ``stream: true`` answers server-sent events; a client that goes away
  mid-stream cancels the run and the upstream call.
- ``GET /v1/models`` and ``GET /v1/models/{id}`` (VIEWER, ``models`` scope): the agents the caller
  may call.

API keys only (``Authorization: Bearer``), no sessions. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (``error_format = "openai"``), with the status
codes OpenAI's SDKs turn into their exception classes; another org's agent is a 404.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from accounts.api.base import TenantAPIView
from accounts.authentication import ApiKeyAuthentication
from accounts.models import ApiKey, Role
from agents.selectors.agents import AgentViewer
from chat.selectors.models import agent_model_id, openai_agent_get, openai_model_list
from chat.services import openai_compat
from core import context
from core.errors import ApplicationError
from core.sse import EventStreamRenderer, sse_response

from .openai_formats import (
    ResponseBuilder,
    chat_completion,
    chat_completion_frames,
    openai_status,
    response_frames,
    responses_extra,
    responses_messages,
    responses_tools,
)
from .openai_serializers import (
    ChatCompletionInputSerializer,
    OpenAIModelListSerializer,
    OpenAIModelSerializer,
    ResponseInputSerializer,
)
from .own_thread import OwnThreadMixin

_TAGS = ["openai"]
_ERRORS = {
    400: OpenApiResponse(OpenApiTypes.OBJECT, description="Bad request (OpenAI error shape)."),
    401: OpenApiResponse(OpenApiTypes.OBJECT, description="Missing or invalid API key."),
    403: OpenApiResponse(OpenApiTypes.OBJECT, description="Role, scope or raw-model rule."),
    404: OpenApiResponse(OpenApiTypes.OBJECT, description="No such model (agent) for this caller."),
    429: OpenApiResponse(OpenApiTypes.OBJECT, description="Rate limited (`Retry-After`)."),
}
# Request fields passed upstream unchanged on a call to a provider model.
CHAT_PASSTHROUGH = (
    "tool_choice", "response_format", "stop", "top_p", "presence_penalty", "frequency_penalty", "seed",
    "parallel_tool_calls", "logit_bias", "user",
)  # fmt: skip


def _api_key(request) -> ApiKey | None:
    return request.auth if isinstance(request.auth, ApiKey) else None


class OpenAIView(OwnThreadMixin, TenantAPIView):
    """API keys only, JSON in, OpenAI's error shape out; run in a worker thread of its own under
    an ASGI server (``chat.api.own_thread``)."""

    authentication_classes = [ApiKeyAuthentication]
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer, EventStreamRenderer]
    error_format = "openai"

    def initial(self, request, *args, **kwargs):
        context.set_channel(openai_compat.CHANNEL)
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc):
        """Errors answer JSON even when the client asked for a stream."""
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        if isinstance(exc, ApplicationError):
            exc.status_code = openai_status(exc)
        return super().handle_exception(exc)

    def target(self, request, model: str) -> openai_compat.Target:
        target = openai_compat.target_resolve(
            org=request.org, user=request.user, role=request.role, api_key=_api_key(request), model=model
        )
        openai_compat.providers_warm(target)
        return target

    def stream(self, request, target, messages, options):
        key = _api_key(request)
        return openai_compat.stream_events(
            target,
            messages,
            options=options,
            request_id=getattr(request, "request_id", None),
            api_key_id=key.pk if key is not None else None,
        )

    async def stream_target(self, request, model: str):
        """The target of a stream served on the loop, or None to leave the request to the thread
        (which answers its error)."""
        try:
            return await openai_compat.atarget_resolve(
                org=request.org, user=request.user, role=request.role, api_key=_api_key(request), model=model
            )
        except ApplicationError:
            return None

    async def stream_here(self, request, target, messages, options):
        """The events of a stream served on the loop, whose run has started and sent its upstream
        request: the response is made while the upstream works."""
        key = _api_key(request)
        return await openai_compat.stream_events_here(
            target,
            messages,
            options=options,
            request_id=getattr(request, "request_id", None),
            api_key_id=key.pk if key is not None else None,
        )


class ChatCompletionsView(OpenAIView):
    """``POST /v1/chat/completions``."""

    write_role = Role.MEMBER
    scope_area = "chat"

    @extend_schema(
        operation_id="openai_chat_completions",
        tags=_TAGS,
        summary="OpenAI-compatible chat completion (an agent, or a provider model).",
        description=(
            "`model` = `agent:<key>` runs the agent (its system prompt and tools; the last message is "
            "the turn, earlier ones the history). A provider model name goes straight to the org's "
            "providers with `tools`, `tool_choice`, `temperature`, `max_tokens`, `response_format`, "
            "`stop`, … (MEMBER+, personal or service keys, while `OPENAI_RAW_MODELS` is on). "
            "`stream: true` answers `chat.completion.chunk` events then `data: [DONE]`; "
            "`stream_options.include_usage` adds a last chunk with `usage` and no choices. "
            "Closing the stream cancels the call."
        ),
        request=ChatCompletionInputSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="chat.completion"),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="chunks, then [DONE]"),
            **_ERRORS,
        },
    )
    def post(self, request):
        serializer = ChatCompletionInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        messages = openai_compat.validate_messages(data["messages"])
        target = self.target(request, data["model"])
        options = _chat_options(data)
        if data["stream"]:
            events = self.stream(request, target, messages, options)
            return _chat_stream_response(events, target, data)
        outcome = openai_compat.run_sync(target, messages, options=options)
        return Response(chat_completion(model=target.label, outcome=outcome))

    loop_serializer_class = ChatCompletionInputSerializer

    async def loop_post(self, request, data):
        """A valid streamed completion, served on the loop (``chat.api.own_thread``); the rest is
        left to :meth:`post`."""
        if not data["stream"]:
            return None
        try:
            messages = openai_compat.validate_messages(data["messages"])
        except ApplicationError:
            return None
        target = await self.stream_target(request, data["model"])
        if target is None:
            return None
        events = await self.stream_here(request, target, messages, _chat_options(data))
        return _chat_stream_response(events, target, data)


def _chat_options(data: dict) -> dict:
    return {
        "tools": data.get("tools") or None,
        "temperature": data.get("temperature"),
        "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens"),
        "extra": {name: data[name] for name in CHAT_PASSTHROUGH if data.get(name) is not None},
    }


def _chat_stream_response(events, target, data: dict):
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    frames = chat_completion_frames(events, model=target.label, include_usage=include_usage)
    return sse_response(frames, kind="openai")


class ResponsesView(OpenAIView):
    """``POST /v1/responses``."""

    write_role = Role.MEMBER
    scope_area = "chat"

    @extend_schema(
        operation_id="openai_responses_create",
        tags=_TAGS,
        summary="OpenAI-compatible Responses API (text, function tools, streaming events).",
        description=(
            "`input` is a string or a list of message, `function_call` and `function_call_output` "
            "items; `instructions` goes first as a system message; `model` follows the rule of "
            "`/v1/chat/completions`. `stream: true` answers `response.created`, "
            "`response.in_progress`, `response.output_item.added`, `response.content_part.added`, "
            "`response.output_text.delta`…, `response.output_text.done`, `response.content_part.done`, "
            "`response.output_item.done` and `response.completed` (each `event:` + `data:` with `type` "
            "and `sequence_number`). Responses are not stored (`previous_response_id` is refused)."
        ),
        request=ResponseInputSerializer,
        responses={
            (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="response"),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="response events"),
            **_ERRORS,
        },
    )
    def post(self, request):
        serializer = ResponseInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        messages = responses_messages(data["input"], data.get("instructions"))
        options = _responses_options(data)
        target = self.target(request, data["model"])
        builder = ResponseBuilder(model=target.label, data=data)
        if data["stream"]:
            events = self.stream(request, target, messages, options)
            return sse_response(response_frames(events, builder=builder), kind="openai")
        outcome = openai_compat.run_sync(target, messages, options=options)
        return Response(builder.finish(outcome))

    loop_serializer_class = ResponseInputSerializer

    async def loop_post(self, request, data):
        """A valid streamed response, served on the loop (``chat.api.own_thread``); the rest is
        left to :meth:`post`."""
        if not data["stream"]:
            return None
        try:
            messages = responses_messages(data["input"], data.get("instructions"))
            options = _responses_options(data)
        except ApplicationError:
            return None
        target = await self.stream_target(request, data["model"])
        if target is None:
            return None
        builder = ResponseBuilder(model=target.label, data=data)
        events = await self.stream_here(request, target, messages, options)
        return sse_response(response_frames(events, builder=builder), kind="openai")


def _responses_options(data: dict) -> dict:
    return {
        "tools": responses_tools(data.get("tools")),
        "temperature": data.get("temperature"),
        "max_tokens": data.get("max_output_tokens"),
        "extra": responses_extra(data),
    }


def _model_row(agent, org) -> dict:
    return {
        "id": agent_model_id(agent),
        "object": "model",
        "created": int(agent.created_at.timestamp()),
        "owned_by": org.slug,
        "name": agent.name,
    }


def _viewer(request) -> AgentViewer:
    key = _api_key(request)
    bound = None
    if key is not None and key.kind == ApiKey.Kind.AGENT:
        bound = key.agent_id or openai_compat.NOBODY
    return AgentViewer(user=request.user, role=request.role, bound_agent_id=bound)


class ModelListView(OpenAIView):
    """``GET /v1/models``."""

    read_role = Role.VIEWER
    scope_area = "models"

    @extend_schema(
        operation_id="openai_models_list",
        tags=_TAGS,
        summary="The agents you may call, as OpenAI models (`agent:<key>`).",
        responses={200: OpenAIModelListSerializer, **_ERRORS},
    )
    def get(self, request):
        agents = openai_model_list(org=request.org, viewer=_viewer(request))
        return Response({"object": "list", "data": [_model_row(agent, request.org) for agent in agents]})


class ModelDetailView(OpenAIView):
    """``GET /v1/models/{model}``."""

    read_role = Role.VIEWER
    scope_area = "models"

    @extend_schema(
        operation_id="openai_models_retrieve",
        tags=_TAGS,
        summary="One agent as an OpenAI model; 404 for any other id.",
        responses={200: OpenAIModelSerializer, **_ERRORS},
    )
    def get(self, request, model: str):
        agent = openai_agent_get(org=request.org, viewer=_viewer(request), model=model)
        return Response(_model_row(agent, request.org))


urlpatterns = [
    path("chat/completions", ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("responses", ResponsesView.as_view(), name="openai-responses"),
    path("models", ModelListView.as_view(), name="openai-models"),
    path("models/<path:model>", ModelDetailView.as_view(), name="openai-model"),
]
