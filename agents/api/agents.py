"""API of `agents`: agents (``/api/v1/agents``), their shares, lifecycle, status stream,
system-prompt preview, export/import, and the public marketplace.

Who sees what (``agents.selectors.agents``): every member sees the org's ``org`` and ``public``
agents, ``private`` ones only their owner, the members they are shared with, and ADMINs/OWNERs.
An agent nobody let you see answers 404, like any row of another org. Editing, deleting,
publishing and sharing need the agent's owner or an ADMIN+ (403 ``ERR_NOT_AGENT_OWNER`` for the
others who can see it).

Agent keys (API keys of kind ``agent``, also sent as ``X-Agent-Token``) see only their own agent:
they may read it, drive its lifecycle (start/stop/restart/heartbeat), preview its prompt, export
it and follow its status; every other agent answers 404. They may not create, edit, delete,
duplicate, publish, share or import agents (403 ``ERR_AGENT_KEY_NOT_ALLOWED``): an agent does not
rewrite its own configuration or mint new agents.

Through an API key these endpoints need the ``agents:read`` / ``agents:write`` scopes.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import ApiKey, Role
from agents.models import Agent
from agents.selectors import agents as selectors
from agents.selectors.agents import AgentViewer
from agents.services import agent_archive
from agents.services import agents as services
from core import realtime
from core.errors import PermissionDeniedError, ValidationError
from core.errors.handlers import envelope
from core.sse import KEEPALIVE, EventStreamRenderer, sse_frame, sse_response

from .agents_serializers import (
    AgentCreateInputSerializer,
    AgentImportInputSerializer,
    AgentListFilterSerializer,
    AgentOutputSerializer,
    AgentShareInputSerializer,
    AgentShareOutputSerializer,
    AgentStatusOutputSerializer,
    AgentUpdateInputSerializer,
    MarketplaceAgentOutputSerializer,
    MarketplaceFilterSerializer,
    SystemPromptPreviewOutputSerializer,
)

_TAGS = ["agents"]
_NOBODY = uuid.UUID(int=0)  # an agent key bound to no agent sees nothing
# Upload limit of the import endpoint: the archive limit plus room for the multipart framing.
IMPORT_BODY_LIMIT = agent_archive.MAX_ARCHIVE_BYTES + 64 * 1024


def viewer_of(request) -> AgentViewer:
    """Who is calling, as the agent selectors and services need it."""
    key = request.auth if isinstance(request.auth, ApiKey) else None
    bound = None
    if key is not None and key.kind == ApiKey.Kind.AGENT:
        bound = key.agent_id or _NOBODY
    return AgentViewer(user=request.user, role=getattr(request, "role", None), bound_agent_id=bound)


class AgentKeyNotAllowed(PermissionDeniedError):
    code = "ERR_AGENT_KEY_NOT_ALLOWED"
    message = "Agent keys may read their own agent and drive its lifecycle, nothing else here."


class JsonErrorsMixin:
    """Errors answer JSON even when the client asked for a stream or an archive."""

    def handle_exception(self, exc):
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return super().handle_exception(exc)


class GzipRenderer(BaseRenderer):
    """Lets ``Accept: application/gzip`` reach the export endpoint."""

    media_type = "application/gzip"
    format = "gz"
    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


def _agent_response(agent: Agent, request, *, status_code: int = status.HTTP_200_OK) -> Response:
    context = {"viewer": viewer_of(request)}
    return Response(AgentOutputSerializer(agent, context=context).data, status=status_code)


class AgentViewSet(JsonErrorsMixin, TenantViewSet):
    """``/api/v1/agents`` and the per-agent routes."""

    queryset = Agent.objects.all()
    serializer_class = AgentOutputSerializer
    read_role = Role.VIEWER
    write_role = Role.MEMBER
    action_roles = {
        "shares": Role.MEMBER,
        "system_prompt_preview": Role.MEMBER,
        "export": Role.MEMBER,
    }
    scope_area = "agents"
    # What an agent key may do (on its own agent); everything else answers 403 for agent keys.
    agent_key_actions = frozenset(
        {"list", "retrieve", "start", "stop", "restart", "heartbeat", "system_prompt_preview", "export"}
    )

    def get_renderers(self):
        """``application/gzip`` is offered by the export only; everything else speaks JSON."""
        if getattr(self, "action", None) == "export":
            return [JSONRenderer(), GzipRenderer()]
        return [JSONRenderer()]

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if viewer_of(request).bound_agent_id is not None and self.action not in self.agent_key_actions:
            raise AgentKeyNotAllowed()

    def base_queryset(self):
        """Only the agents the caller may see; detail routes answer 404 for the rest."""
        return selectors.agent_list(org=self.request.org, viewer=viewer_of(self.request))

    def _agent(self, id) -> Agent:
        return selectors.agent_get(org=self.request.org, viewer=viewer_of(self.request), agent_id=id)

    def _editor(self) -> dict[str, Any]:
        return {"actor": self.request.user, "actor_role": self.request.role}

    # --- collection and detail -----------------------------------------------------------------

    @extend_schema(
        operation_id="agents_list",
        tags=_TAGS,
        summary="Agents you may see in the org.",
        parameters=[AgentListFilterSerializer],
        responses=AgentOutputSerializer(many=True),
    )
    def list(self, request):
        filters = AgentListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        agents = selectors.agent_list(
            org=request.org,
            viewer=viewer_of(request),
            visibility=data.get("visibility"),
            status=data.get("status"),
            owner_id=data.get("owner"),
            search=data.get("q"),
        )
        page = self.paginate_queryset(agents)
        context = {"viewer": viewer_of(request)}
        return self.get_paginated_response(AgentOutputSerializer(page, many=True, context=context).data)

    @extend_schema(
        operation_id="agents_create",
        tags=_TAGS,
        summary="Create an agent (you become its owner).",
        description=(
            "`key` must be unique in the org (409 `ERR_AGENT_KEY_EXISTS`); `provider` must be a "
            "provider of the org (400 `ERR_PROVIDER_NOT_FOUND`); `tools` must be registered tools "
            "(400 `ERR_UNKNOWN_TOOL`). `visibility` public publishes it on the marketplace."
        ),
        request=AgentCreateInputSerializer,
        responses={201: AgentOutputSerializer},
    )
    def create(self, request):
        body = AgentCreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = services.agent_create(org=request.org, actor=request.user, **body.validated_data)
        return _agent_response(agent, request, status_code=status.HTTP_201_CREATED)

    @extend_schema(operation_id="agents_retrieve", tags=_TAGS, responses=AgentOutputSerializer)
    def retrieve(self, request, id):
        return _agent_response(self._agent(id), request)

    @extend_schema(
        operation_id="agents_partial_update",
        tags=_TAGS,
        summary="Change an agent (its owner or an ADMIN).",
        description="Setting `visibility` to `org` or `private` takes a published agent off the marketplace.",
        request=AgentUpdateInputSerializer,
        responses=AgentOutputSerializer,
    )
    def partial_update(self, request, id):
        agent = self._editable(id)  # first: 404 / 403 whatever the body says
        body = AgentUpdateInputSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        agent = services.agent_update(agent=agent, **self._editor(), **body.validated_data)
        return _agent_response(agent, request)

    @extend_schema(
        operation_id="agents_destroy",
        tags=_TAGS,
        summary="Delete an agent (its owner or an ADMIN); its agent keys are revoked.",
        responses={204: OpenApiResponse(description="Deleted.")},
    )
    def destroy(self, request, id):
        services.agent_delete(agent=self._agent(id), **self._editor())
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- duplicate and publish ----------------------------------------------------------------

    @extend_schema(
        operation_id="agents_duplicate",
        tags=_TAGS,
        summary="Copy an agent you can see: you own the copy, keyed `<key>-copy[-n]`, stopped.",
        request=None,
        responses={201: AgentOutputSerializer},
    )
    def duplicate(self, request, id):
        copy = services.agent_duplicate(agent=self._agent(id), actor=request.user)
        return _agent_response(copy, request, status_code=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="agents_publish",
        tags=_TAGS,
        summary="List the agent on the public marketplace (its owner or an ADMIN).",
        request=None,
        responses=AgentOutputSerializer,
    )
    def publish(self, request, id):
        agent = services.agent_publish(agent=self._agent(id), **self._editor())
        return _agent_response(agent, request)

    # --- shares --------------------------------------------------------------------------------

    def _editable(self, id) -> Agent:
        agent = self._agent(id)
        if not selectors.agent_can_edit(agent=agent, viewer=viewer_of(self.request)):
            raise services.NotAgentOwner()
        return agent

    @extend_schema(
        operation_id="agents_shares_list",
        tags=_TAGS,
        summary="Members the agent is shared with (its owner or an ADMIN).",
        responses=AgentShareOutputSerializer(many=True),
    )
    def shares(self, request, id):
        shares = selectors.agent_share_list(agent=self._editable(id))
        page = self.paginate_queryset(shares)
        return self.get_paginated_response(AgentShareOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="agents_shares_create",
        tags=_TAGS,
        summary="Share the agent with a member of the org (its owner or an ADMIN).",
        description="201 for a new share, 200 when it was shared already.",
        request=AgentShareInputSerializer,
        responses={201: AgentShareOutputSerializer, 200: AgentShareOutputSerializer},
    )
    def share_add(self, request, id):
        agent = self._editable(id)  # first: 404 / 403 whatever the body says
        body = AgentShareInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        share, created = services.agent_share_add(
            agent=agent, user_id=body.validated_data["user_id"], **self._editor()
        )
        return Response(
            AgentShareOutputSerializer(share).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        operation_id="agents_shares_destroy",
        tags=_TAGS,
        summary="Stop sharing the agent with a member.",
        responses={204: OpenApiResponse(description="No longer shared.")},
    )
    def share_remove(self, request, id, user_id):
        services.agent_share_remove(agent=self._agent(id), user_id=user_id, **self._editor())
        return Response(status=status.HTTP_204_NO_CONTENT)

    # --- system prompt ------------------------------------------------------------------------

    @extend_schema(
        operation_id="agents_system_prompt_preview",
        tags=_TAGS,
        summary="The system prompt rendered for you now.",
        description=(
            "Variables are written `{{ name }}`; unknown ones render empty and are listed in "
            "`unknown_variables`. Available: "
            + ", ".join(f"`{name}` ({meaning})" for name, meaning in selectors.PROMPT_VARIABLES.items())
            + "."
        ),
        responses=SystemPromptPreviewOutputSerializer,
    )
    def system_prompt_preview(self, request, id):
        agent = self._agent(id)
        rendered, context, unknown = selectors.agent_system_prompt_render(agent=agent, user=request.user)
        return Response(
            {
                "system_prompt": rendered,
                "template": agent.system_prompt,
                "variables": context,
                "unknown_variables": unknown,
                "available_variables": dict(selectors.PROMPT_VARIABLES),
            }
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def _lifecycle(self, request, id, service) -> Response:
        agent = service(agent=self._agent(id), actor=request.user)
        return Response(AgentStatusOutputSerializer(agent).data)

    @extend_schema(
        operation_id="agents_start",
        tags=_TAGS,
        summary="Mark the agent running; it shows online once it sends heartbeats.",
        request=None,
        responses=AgentStatusOutputSerializer,
    )
    def start(self, request, id):
        return self._lifecycle(request, id, services.agent_start)

    @extend_schema(
        operation_id="agents_stop",
        tags=_TAGS,
        summary="Mark the agent stopped.",
        request=None,
        responses=AgentStatusOutputSerializer,
    )
    def stop(self, request, id):
        return self._lifecycle(request, id, services.agent_stop)

    @extend_schema(
        operation_id="agents_restart",
        tags=_TAGS,
        summary="Ask the agent to restart (running, and a `restarted` event on the status stream).",
        request=None,
        responses=AgentStatusOutputSerializer,
    )
    def restart(self, request, id):
        return self._lifecycle(request, id, services.agent_restart)

    @extend_schema(
        operation_id="agents_heartbeat",
        tags=_TAGS,
        summary="The agent is alive: records the heartbeat and marks it running.",
        description=(
            "An agent without a heartbeat for `offline_after_seconds` (AGENT_OFFLINE_AFTER) shows "
            "`online: false`. Usually sent by the agent itself with its agent key (X-Agent-Token)."
        ),
        request=None,
        responses=AgentStatusOutputSerializer,
    )
    def heartbeat(self, request, id):
        return self._lifecycle(request, id, services.agent_heartbeat)

    # --- export --------------------------------------------------------------------------------

    @extend_schema(
        operation_id="agents_export",
        tags=_TAGS,
        summary="Download the agent as a .tar.gz archive (no secrets).",
        description=(
            "Holds `manifest.json` (`format` agent-platform.agent, `version` 1, `exported_at`, `files` "
            "with size and sha256), `agent.json` (the settings; the provider by name and type, never "
            "a key; `source` with the ids of the exporting org and agent) and `system_prompt.md`. "
            "Import it with POST /api/v1/agents/import."
        ),
        responses={
            (200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY, description="The archive.")
        },
    )
    def export(self, request, id):
        filename, data = agent_archive.agent_export(agent=self._agent(id), actor=request.user)
        response = HttpResponse(data, content_type="application/gzip")
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        response["Content-Length"] = str(len(data))
        return response


class AgentImportView(JsonErrorsMixin, TenantAPIView):
    """``POST /api/v1/agents/import``: a new agent from an export archive."""

    write_role = Role.MEMBER
    scope_area = "agents"
    parser_classes = [MultiPartParser, FormParser]
    max_body_size = IMPORT_BODY_LIMIT

    @extend_schema(
        operation_id="agents_import",
        tags=_TAGS,
        summary="Create an agent from an export archive (multipart field `file`, at most 5 MB).",
        description=(
            "201 with the new agent (new id, you own it; a key in use becomes `<key>-imported[-n]`; the "
            "provider is matched by name in the org, else none; a public agent comes in org-visible). "
            "Anything wrong with the archive answers 400 `ERR_BAD_ARCHIVE` and writes nothing: not "
            "gzip or not tar, no manifest, another format or version, unsafe paths, links, members over "
            "1 MB, invalid agent.json fields."
        ),
        request={"multipart/form-data": AgentImportInputSerializer},
        responses={201: AgentOutputSerializer},
    )
    def post(self, request):
        if viewer_of(request).bound_agent_id is not None:
            raise AgentKeyNotAllowed()
        upload = request.FILES.get("file")
        if upload is None:
            raise ValidationError(
                "file: Send the archive as the multipart field `file`.",
                details={"fields": {"file": ["No file was submitted."]}},
            )
        if upload.size > agent_archive.MAX_ARCHIVE_BYTES:
            raise agent_archive.BadArchive(
                f"The archive is larger than {agent_archive.MAX_ARCHIVE_BYTES} bytes.",
                details={"limit_bytes": agent_archive.MAX_ARCHIVE_BYTES},
            )
        agent = agent_archive.agent_import(org=request.org, actor=request.user, data=upload.read())
        return _agent_response(agent, request, status_code=status.HTTP_201_CREATED)


# --- the status stream ---------------------------------------------------------------------------


def _diff(before: dict[str, dict], after: dict[str, dict], *, change: str | None) -> list[tuple[str, dict]]:
    """Events that turn ``before`` into ``after``: ``agent.status`` for new or changed rows,
    ``agent.removed`` for rows gone (deleted, or no longer visible to the caller)."""
    events: list[tuple[str, dict]] = []
    for agent_id, row in after.items():
        if before.get(agent_id) != row or change == "restarted":
            events.append(("agent.status", {**row, "change": change or "changed"}))
    for agent_id in before.keys() - after.keys():
        events.append(("agent.removed", {"id": agent_id, "change": change or "removed"}))
    return events


async def agent_status_frames(*, org_id, viewer: AgentViewer, api_key_id) -> Any:
    """SSE frames: one ``snapshot`` of the agents the caller sees, then ``agent.status`` and
    ``agent.removed`` events as they change, each with an increasing ``id:``.

    A push on the org's group names the agent to re-read; without one, the whole set is re-read
    every ``follow_interval()`` (that is how changes made in other processes reach the stream
    with the in-memory layer, and how an agent that went offline by timeout gets reported). Access
    is re-checked every ``SSE_KEEPALIVE_SECONDS``; a caller who lost it gets an ``error`` event and
    the stream ends.
    """
    rows_of = database_sync_to_async(selectors.agent_status_rows)
    role_of = database_sync_to_async(selectors.stream_viewer_role)
    loop = asyncio.get_running_loop()
    seq, idle, checked_at = 1, 0.0, loop.time()
    async with realtime.Subscription(services.agent_group(org_id)) as subscription:
        rows = await rows_of(org_id=org_id, viewer=viewer)
        snapshot = {
            "agents": list(rows.values()),
            "offline_after_seconds": selectors.offline_after_seconds(),
            "server_time": timezone.now().isoformat(),
        }
        yield sse_frame(snapshot, event="snapshot", event_id=seq)
        while True:
            wait = realtime.follow_interval()
            event = await subscription.next(wait)
            agent_id = _uuid_or_none(event.get("agent_id")) if event is not None else None
            if agent_id is None:
                idle += 0.0 if event is not None else wait
                fresh = await rows_of(org_id=org_id, viewer=viewer)
                events = _diff(rows, fresh, change=None)
                rows = fresh
            else:
                key = str(agent_id)
                one = await rows_of(org_id=org_id, viewer=viewer, agent_id=agent_id)
                before = {key: rows[key]} if key in rows else {}
                events = _diff(before, one, change=event.get("change"))
                rows = {**{k: v for k, v in rows.items() if k != key}, **one}
            for name, data in events:
                seq += 1
                yield sse_frame(data, event=name, event_id=seq)
            if events:
                idle = 0.0
            if loop.time() - checked_at >= settings.SSE_KEEPALIVE_SECONDS:
                checked_at = loop.time()
                role = await role_of(org_id=org_id, viewer=viewer, api_key_id=api_key_id)
                if role is None:
                    error = envelope("ERR_PERMISSION_DENIED", "You no longer have access to this org.")
                    yield sse_frame(error["error"], event="error")
                    return
                viewer = replace(viewer, role=role)
            if idle >= settings.SSE_KEEPALIVE_SECONDS:
                idle = 0.0
                yield KEEPALIVE


def _uuid_or_none(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


class AgentStreamView(JsonErrorsMixin, TenantAPIView):
    """``GET /api/v1/agents/stream``: server-sent events of the agents' status."""

    read_role = Role.VIEWER
    scope_area = "agents"
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="agents_stream",
        tags=_TAGS,
        summary="Server-sent events of the status of the agents you can see.",
        description=(
            "First a `snapshot` event `{agents: [{id, key, name, status, online, last_heartbeat_at}], "
            "offline_after_seconds, server_time}`, then `agent.status` (an agent was created, changed, "
            "started, stopped, restarted or sent a heartbeat; `change` says which) and "
            "`agent.removed` (deleted, or no longer visible to you), each with an `id:` line, and "
            "keep-alive comments when idle. An agent that stops sending heartbeats goes offline "
            "without any write: compute it from `last_heartbeat_at` + `offline_after_seconds` (the "
            "stream also reports the flip when it next re-reads the agents). A reconnect starts with "
            "a fresh snapshot; `Last-Event-ID` is not replayed."
        ),
        responses={
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="Server-sent events.")
        },
    )
    def get(self, request):
        key = request.auth if isinstance(request.auth, ApiKey) else None
        frames = agent_status_frames(
            org_id=request.org.pk, viewer=viewer_of(request), api_key_id=key.pk if key is not None else None
        )
        return sse_response(frames, kind="agents")


# --- the marketplace ---------------------------------------------------------------------------


class MarketplaceAgentListView(generics.GenericAPIView):
    """``GET /api/v1/marketplace/agents``: published agents of every org, for anyone."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    serializer_class = MarketplaceAgentOutputSerializer
    queryset = Agent.objects.none()

    @extend_schema(
        operation_id="marketplace_agents_list",
        tags=["marketplace"],
        summary="Published agents of every organisation (public, no sign-in).",
        description=(
            "Shows what a visitor needs to pick an agent: name, key, description, the publishing "
            "org's name and slug, model, tool names and when it was published. Never shown: the "
            "system prompt (the publisher's work and often internal), providers, owners, knowledge "
            "bases or anything secret."
        ),
        parameters=[MarketplaceFilterSerializer],
        responses=MarketplaceAgentOutputSerializer(many=True),
    )
    def get(self, request):
        filters = MarketplaceFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        agents = selectors.marketplace_agent_list(search=filters.validated_data.get("q"))
        page = self.paginate_queryset(agents)
        return self.get_paginated_response(MarketplaceAgentOutputSerializer(page, many=True).data)


_collection = AgentViewSet.as_view({"get": "list", "post": "create"})
_detail = AgentViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})


def _action(method: str, action: str):
    return AgentViewSet.as_view({method: action})


urlpatterns = [
    path("agents", _collection, name="agents"),
    path("agents/stream", AgentStreamView.as_view(), name="agents-stream"),
    path("agents/import", AgentImportView.as_view(), name="agents-import"),
    path("agents/<uuid:id>", _detail, name="agent-detail"),
    path("agents/<uuid:id>/duplicate", _action("post", "duplicate"), name="agent-duplicate"),
    path("agents/<uuid:id>/publish", _action("post", "publish"), name="agent-publish"),
    path(
        "agents/<uuid:id>/shares",
        AgentViewSet.as_view({"get": "shares", "post": "share_add"}),
        name="agent-shares",
    ),
    path("agents/<uuid:id>/shares/<uuid:user_id>", _action("delete", "share_remove"), name="agent-share"),
    path(
        "agents/<uuid:id>/system-prompt-preview",
        _action("get", "system_prompt_preview"),
        name="agent-system-prompt-preview",
    ),
    path("agents/<uuid:id>/start", _action("post", "start"), name="agent-start"),
    path("agents/<uuid:id>/stop", _action("post", "stop"), name="agent-stop"),
    path("agents/<uuid:id>/restart", _action("post", "restart"), name="agent-restart"),
    path("agents/<uuid:id>/heartbeat", _action("post", "heartbeat"), name="agent-heartbeat"),
    path("agents/<uuid:id>/export", _action("get", "export"), name="agent-export"),
    path("marketplace/agents", MarketplaceAgentListView.as_view(), name="marketplace-agents"),
]
