"""API of `agents`: the tool catalogue and its per-org settings, invoking a tool by hand, an
agent's resolved tools, and waking an agent (one run of the LLM ↔ tool loop).

- ``GET /tools/builtin`` (VIEWER) · ``GET|PUT /tools/builtin/{name}`` (VIEWER · ADMIN)
- ``POST /tools/invoke`` (MEMBER) ``{tool, args, dry_run, agent?}``
- ``GET /agents/{id}/tools`` (MEMBER) · ``POST /agents/{id}/wake`` (MEMBER)

The agent routes look the agent up first (an agent the caller cannot see, or of another org,
answers 404 before the body is even read).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from accounts.api.base import TenantAPIView
from accounts.models import ApiKey, Role
from agents.runtime.loop import run_agent
from agents.selectors.agents import AgentViewer, agent_get
from agents.selectors.tools import agent_tool_list, builtin_tool_get, builtin_tool_list
from agents.services.tools import builtin_tool_update, tool_invoke
from core.pagination import LimitOffsetPagination

from .tools_serializers import (
    AgentToolListOutputSerializer,
    AgentWakeInputSerializer,
    AgentWakeOutputSerializer,
    BuiltinToolOutputSerializer,
    BuiltinToolPageOutputSerializer,
    BuiltinToolUpdateInputSerializer,
    ToolInvokeInputSerializer,
    ToolInvokeOutputSerializer,
)


def agent_viewer(request) -> AgentViewer:
    """Who looks at agents in this request (an agent key sees only its own agent)."""
    key = request.auth if isinstance(request.auth, ApiKey) else None
    bound = key.agent_id if key is not None and key.kind == ApiKey.Kind.AGENT else None
    return AgentViewer(user=request.user, role=request.role, bound_agent_id=bound)


def _visible_agent(request, agent_id):
    return agent_get(org=request.org, viewer=agent_viewer(request), agent_id=agent_id)


class BuiltinToolListView(TenantAPIView):
    """Every tool of the platform with whether it is enabled in the org and its settings."""

    scope_area = "tools"
    read_role = Role.VIEWER

    @extend_schema(
        operation_id="tools_builtin_list",
        tags=["tools"],
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT, required=False),
            OpenApiParameter("offset", OpenApiTypes.INT, required=False),
        ],
        responses=BuiltinToolPageOutputSerializer,
    )
    def get(self, request):
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(builtin_tool_list(org=request.org), request, view=self)
        return paginator.get_paginated_response(BuiltinToolOutputSerializer(page, many=True).data)


class BuiltinToolDetailView(TenantAPIView):
    """One tool as the org sees it (VIEWER); enable, disable or configure it (ADMIN)."""

    scope_area = "tools"
    read_role = Role.VIEWER
    method_roles = {"PUT": Role.ADMIN}

    @extend_schema(
        operation_id="tools_builtin_retrieve", tags=["tools"], responses=BuiltinToolOutputSerializer
    )
    def get(self, request, name: str):
        return Response(BuiltinToolOutputSerializer(builtin_tool_get(org=request.org, name=name)).data)

    @extend_schema(
        operation_id="tools_builtin_update",
        tags=["tools"],
        request=BuiltinToolUpdateInputSerializer,
        responses=BuiltinToolOutputSerializer,
        summary="Enable, disable or configure a tool for the org (fields left out keep their value).",
    )
    def put(self, request, name: str):
        builtin_tool_get(org=request.org, name=name)  # unknown name: 404 before the body is judged
        data = BuiltinToolUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        builtin_tool_update(org=request.org, actor=request.user, name=name, **data.validated_data)
        return Response(BuiltinToolOutputSerializer(builtin_tool_get(org=request.org, name=name)).data)


class ToolInvokeView(TenantAPIView):
    """Run a tool by hand, or check arguments against its schema with ``dry_run``."""

    scope_area = "tools"
    write_role = Role.MEMBER

    @extend_schema(
        operation_id="tools_invoke",
        tags=["tools"],
        request=ToolInvokeInputSerializer,
        responses=ToolInvokeOutputSerializer,
        summary=(
            "dry_run: {tool, schema, valid, errors?}; else {tool, result} or {tool, error}. "
            "Unknown tool 404 ERR_UNKNOWN_TOOL, disabled 403 ERR_TOOL_DISABLED, bad args 400."
        ),
    )
    def post(self, request):
        data = ToolInvokeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        agent = _visible_agent(request, values["agent"]) if values.get("agent") else None
        answer = tool_invoke(
            org=request.org,
            actor=request.user,
            name=values["tool"],
            args=values["args"],
            agent=agent,
            dry_run=values["dry_run"],
        )
        return Response(ToolInvokeOutputSerializer(answer).data)


class AgentToolsView(TenantAPIView):
    """The agent's resolved tools (listed, registered and enabled in the org) with their schemas."""

    scope_area = "agents"
    read_role = Role.MEMBER

    @extend_schema(operation_id="agents_tools_list", tags=["agents"], responses=AgentToolListOutputSerializer)
    def get(self, request, id):
        agent = _visible_agent(request, id)
        return Response(AgentToolListOutputSerializer(agent_tool_list(agent=agent)).data)


class AgentWakeView(TenantAPIView):
    """Run the agent once on a message: the LLM ↔ tool loop, recorded as an AgentRun."""

    scope_area = "agents"
    write_role = Role.MEMBER

    @extend_schema(
        operation_id="agents_wake",
        tags=["agents"],
        request=AgentWakeInputSerializer,
        responses=AgentWakeOutputSerializer,
        summary="Run the agent once; 424 ERR_NO_PROVIDER / ERR_PROVIDER_AUTH, 502 ERR_PROVIDER_UNAVAILABLE.",
    )
    def post(self, request, id):
        agent = _visible_agent(request, id)
        data = AgentWakeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = run_agent(
            agent=agent,
            message=data.validated_data["message"],
            user=request.user,
            conversation_id=data.validated_data.get("conversation_id"),
            trigger="wake",
        )
        answer = {
            "content": run.output,
            "run_id": run.pk,
            "usage": {
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "total_tokens": run.prompt_tokens + run.completion_tokens,
            },
            "finish_reason": run.finish_reason,
            "provider_source": run.provider_source,
            "model": run.model,
            "tool_calls": run.tool_calls,
            "duration_ms": run.duration_ms,
        }
        return Response(AgentWakeOutputSerializer(answer).data)


urlpatterns = [
    path("tools/builtin", BuiltinToolListView.as_view(), name="tools-builtin-list"),
    path("tools/builtin/<str:name>", BuiltinToolDetailView.as_view(), name="tools-builtin-detail"),
    path("tools/invoke", ToolInvokeView.as_view(), name="tools-invoke"),
    path("agents/<uuid:id>/tools", AgentToolsView.as_view(), name="agents-tools"),
    path("agents/<uuid:id>/wake", AgentWakeView.as_view(), name="agents-wake"),
]
