"""Reads of tools: the org's tool settings, the tool catalogue as an org sees it, an agent's
resolved tools, an agent's memory as one call may see it, and runs.

Which agents a caller may see is decided in ``agents.selectors.agents`` (``agent_get``), not here.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet

from accounts.models import Organization
from agents.models import Agent, AgentMemoryEntry, AgentRun, BuiltinToolConfig
from agents.tools.registry import Tool, all_tools, config_for, get_tool, is_enabled
from core.errors import NotFoundError


def tool_settings(*, org_id: Any) -> dict[str, tuple[bool, dict]]:
    """The org's ``{tool name: (enabled, config)}`` from its BuiltinToolConfig rows."""
    rows = BuiltinToolConfig.objects.filter(org_id=org_id).values_list("name", "enabled", "config")
    return {name: (enabled, config or {}) for name, enabled, config in rows}


def _tool_row(tool: Tool, settings: dict[str, tuple[bool, dict]]) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "enabled": is_enabled(tool, settings),
        "default_enabled": tool.default_enabled,
        "config": config_for(tool, settings),
        "config_schema": tool.config_schema,
    }


def builtin_tool_list(*, org: Organization) -> list[dict[str, Any]]:
    """Every registered tool with whether it is enabled in the org and its config there."""
    settings = tool_settings(org_id=org.pk)
    return [_tool_row(tool, settings) for tool in all_tools()]


def builtin_tool_get(*, org: Organization, name: str) -> dict[str, Any]:
    """One registered tool as the org sees it; 404 ERR_UNKNOWN_TOOL for an unknown name."""
    tool = get_tool(name)
    if tool is None:
        raise NotFoundError(f"There is no tool named {name!r}.", code="ERR_UNKNOWN_TOOL")
    return _tool_row(tool, tool_settings(org_id=org.pk))


def agent_tool_list(*, agent: Agent) -> dict[str, Any]:
    """The agent's resolved tools (listed, registered and enabled in its org) with their schemas,
    and the listed names that are not usable with the reason (``unknown`` or ``disabled``)."""
    settings = tool_settings(org_id=agent.org_id)
    items, unavailable, seen = [], [], set()
    for name in agent.tools or []:
        if not isinstance(name, str) or name in seen:
            continue
        seen.add(name)
        tool = get_tool(name)
        if tool is None:
            unavailable.append({"name": name, "reason": "unknown"})
        elif not is_enabled(tool, settings):
            unavailable.append({"name": name, "reason": "disabled"})
        else:
            items.append(
                {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                    "schema": tool.openai_schema(),
                }
            )
    return {"items": items, "unavailable": unavailable}


def memory_entry_list(*, org_id: Any, agent_id: Any, user_id: Any | None) -> QuerySet[AgentMemoryEntry]:
    """An agent's memory visible in a call: entries of no user plus the calling user's own."""
    entries = AgentMemoryEntry.objects.filter(org_id=org_id, agent_id=agent_id)
    if user_id is None:
        return entries.filter(user__isnull=True)
    return entries.filter(Q(user__isnull=True) | Q(user_id=user_id))


def agent_run_get(*, org: Organization, run_id: UUID) -> AgentRun:
    """One run of the org, else 404."""
    run = AgentRun.objects.filter(org=org, pk=run_id).first()
    if run is None:
        raise NotFoundError("Run not found.", code="ERR_NOT_FOUND")
    return run
