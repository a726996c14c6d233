"""Writes of tools: an org's settings of a built-in tool, running a tool by hand, and what tools
themselves write (the agent's memory entries)."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from agents.models import Agent, AgentMemoryEntry, BuiltinToolConfig
from agents.tools.registry import (
    InvalidToolArguments,
    ToolContext,
    ToolDisabled,
    ToolError,
    UnknownTool,
    aexecute,
    config_for,
    get_tool,
    is_enabled,
    validate_args,
)
from core.errors import ValidationError


def _full_clean(row, *, exclude: list[str]) -> None:
    try:
        row.full_clean(exclude=exclude)
    except DjangoValidationError as exc:
        fields = exc.message_dict
        first, messages = next(iter(fields.items()))
        raise ValidationError(f"{first}: {messages[0]}", details={"fields": fields}) from exc


@transaction.atomic
def builtin_tool_update(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    enabled: bool | None = None,
    config: dict[str, Any] | None = None,
) -> BuiltinToolConfig:
    """Enable, disable or configure a tool for the org; the config must fit the tool's schema.

    Fields left out keep their value (a tool without a row starts from its default). Audited as
    ``tool.configured``.
    """
    tool = get_tool(name)
    if tool is None:
        raise UnknownTool(f"There is no tool named {name!r}.")
    if config is not None:
        errors = validate_args(tool.config_schema, config, "config")
        if errors:
            raise ValidationError(errors[0], code="ERR_VALIDATION", details={"fields": {"config": errors}})
    row = BuiltinToolConfig.objects.select_for_update().filter(org=org, name=name).first()
    before = (
        {"enabled": row.enabled, "config": row.config}
        if row
        else {"enabled": tool.default_enabled, "config": {}}
    )
    if row is None:
        row = BuiltinToolConfig(org=org, name=name, enabled=tool.default_enabled, config={})
    if enabled is not None:
        row.enabled = enabled
    if config is not None:
        row.config = config
    _full_clean(row, exclude=["org"])
    row.save()
    audit_record(
        org=org,
        actor=actor,
        action="tool.configured",
        entity_type="tool",
        entity_id=name,
        before=before,
        after={"enabled": row.enabled, "config": row.config},
    )
    return row


@transaction.atomic
def memory_entry_create(
    *, org: Organization, agent: Agent, user: User | None, content: str, tags: list[str] | None = None
) -> AgentMemoryEntry:
    """Remember something for an agent (and, when a person is in the call, for that person).

    Audited as ``agent_memory.saved`` (the content stays in the row, not in the audit trail).
    """
    entry = AgentMemoryEntry(org=org, agent=agent, user=user, content=content, tags=list(tags or []))
    _full_clean(entry, exclude=["org", "agent", "user"])
    entry.save()
    audit_record(
        org=org,
        actor=user,
        action="agent_memory.saved",
        entity=entry,
        entity_type="agent_memory",
        after={"agent": agent.pk, "tags": entry.tags, "chars": len(content)},
    )
    return entry


def tool_invoke(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    args: dict[str, Any],
    agent: Agent | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Run one tool by hand (``POST /tools/invoke``), or with ``dry_run`` only check the arguments.

    Unknown tool → 404 ERR_UNKNOWN_TOOL; disabled in the org → 403 ERR_TOOL_DISABLED; invalid
    arguments → 400 ERR_TOOL_ARGUMENTS (a dry run reports them instead). The tool's own failure is
    an answer, not an error: ``{tool, error: {code, message}}``. A real call is audited as
    ``tool.invoked`` after it ran (no transaction is held open across a web fetch).
    """
    from agents.selectors.tools import tool_settings

    tool = get_tool(name)
    if tool is None:
        raise UnknownTool(f"There is no tool named {name!r}.")
    settings = tool_settings(org_id=org.pk)
    if not is_enabled(tool, settings):
        raise ToolDisabled(f"The tool {name} is disabled in your organisation; an admin can enable it.")
    errors = validate_args(tool.parameters, args)
    if dry_run:
        answer: dict[str, Any] = {"tool": name, "schema": tool.openai_schema(), "valid": not errors}
        if errors:
            answer["errors"] = errors
        return answer
    if errors:
        raise InvalidToolArguments(
            "The tool arguments are not valid: " + " ".join(errors), details={"errors": errors}
        )
    ctx = ToolContext(org=org, agent=agent, user=actor, config=config_for(tool, settings))
    outcome = async_to_sync(aexecute)(tool, ctx, args)
    answer = {"tool": name, "duration_ms": outcome["duration_ms"]}
    if "error" in outcome:
        answer["error"] = {"code": outcome.get("code") or ToolError.code, "message": outcome["error"]}
    else:
        answer["result"] = outcome["result"]
    audit_record(
        org=org,
        actor=actor,
        action="tool.invoked",
        entity_type="tool",
        entity_id=name,
        after={"agent": agent.pk if agent else None, "ok": "error" not in outcome},
    )
    return answer
