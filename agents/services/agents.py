"""Writes of agents: create, update, delete, duplicate, publish, shares and the lifecycle
(start/stop/restart/heartbeat). Export and import archives are in ``agent_archive``.

Every function is keyword-only and atomic, validates before it saves, writes an audit row inside its
transaction and announces status changes on the org's realtime group (``agents.org.<org id>``)
once the transaction commits.

Who may change an agent: its owner, or an ADMIN/OWNER of its org. Callers pass the role they act
with (``actor_role``); ``actor=None`` with no ``actor_role`` is a trusted system call (the Django
admin, management commands) and skips the check. Seeing an agent is checked before these are
called (``agents.selectors.agents.agent_get``), so a caller who cannot see it got a 404 already.

Heartbeats are telemetry, not edits: they are not audited unless they change the status (a
heartbeat from a stopped agent starts it).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization, Role, User
from accounts.services.audit import audit_record
from agents.models import Agent, AgentShare, Provider
from core.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from core.quotas import check_limit
from core.realtime import publish_on_commit

KEY_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
KEY_MAX_LENGTH = 64
NAME_MAX_LENGTH = 200
TOOL_NAME_MAX_LENGTH = 64
MAX_LIST_ITEMS = 100
MAX_SYSTEM_PROMPT_CHARS = 100_000

# Fields a create or update may set (``skills`` are granted by ADMINs through the skills API).
EDITABLE_FIELDS = (
    "key",
    "name",
    "description",
    "provider",
    "model",
    "system_prompt",
    "temperature",
    "max_tokens",
    "max_tool_iterations",
    "tools",
    "knowledge_bases",
    "visibility",
)


def agent_group(org_id: Any) -> str:
    """The realtime group every status change of the org's agents is published to."""
    return f"agents.org.{org_id}"


# --- errors ------------------------------------------------------------------------------------


class AgentKeyExists(ConflictError):
    code = "ERR_AGENT_KEY_EXISTS"
    message = "An agent with this key already exists in the organisation."


class NotAgentOwner(PermissionDeniedError):
    code = "ERR_NOT_AGENT_OWNER"
    message = "Only the agent's owner or an admin of the organisation may do this."


def _field_error(
    field: str, message: str, *, code: str = "ERR_VALIDATION", **details: Any
) -> ValidationError:
    """A 400 shaped like DRF's field errors, so clients read one format."""
    return ValidationError(
        f"{field}: {message}", code=code, details={"fields": {field: [message]}, **details}
    )


# --- helpers -----------------------------------------------------------------------------------


def _snapshot(agent: Agent) -> dict[str, Any]:
    """The audited view of an agent (it holds no secrets: provider keys live on the provider)."""
    return {
        "key": agent.key,
        "name": agent.name,
        "description": agent.description,
        "provider": agent.provider_id,
        "model": agent.model,
        "system_prompt": agent.system_prompt,
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "max_tool_iterations": agent.max_tool_iterations,
        "tools": list(agent.tools or []),
        "skills": list(agent.skills or []),
        "knowledge_bases": list(agent.knowledge_bases or []),
        "visibility": agent.visibility,
        "status": agent.status,
        "owner": agent.owner_id,
        "published_at": agent.published_at,
        "forked_from": agent.forked_from_id,
    }


def _event(agent: Agent, change: str) -> dict[str, Any]:
    """The realtime payload of a change: enough for followers to know which agent to re-read."""
    return {
        "type": "agent.status",
        "change": change,
        "agent_id": str(agent.pk),
        "status": agent.status,
        "last_heartbeat_at": agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None,
    }


def _announce(agent: Agent, change: str) -> None:
    publish_on_commit(agent_group(agent.org_id), _event(agent, change))


def _is_system(actor: User | None, actor_role: str | None) -> bool:
    return actor is None and actor_role is None


def _acting_role(org: Organization, actor: User | None, actor_role: str | None) -> str | None:
    if actor_role is not None:
        return actor_role
    if actor is None:
        return None
    return Membership.objects.filter(org=org, user=actor).values_list("role", flat=True).first()


def _require_editor(agent: Agent, actor: User | None, actor_role: str | None) -> None:
    """Owner of the agent or ADMIN+ of its org, else 403 ``ERR_NOT_AGENT_OWNER``."""
    if _is_system(actor, actor_role):
        return
    if Role.rank(_acting_role(agent.org, actor, actor_role)) >= Role.rank(Role.ADMIN):
        return
    if actor is not None and agent.owner_id == actor.pk:
        return
    raise NotAgentOwner()


def _full_clean(agent: Agent) -> None:
    """Model validation as the 400 envelope (never a 500); the key clash is checked apart (409)."""
    try:
        agent.full_clean(exclude=["org", "owner", "provider", "forked_from"], validate_unique=False)
    except DjangoValidationError as exc:
        fields = exc.message_dict
        first, messages = next(iter(fields.items()))
        raise ValidationError(f"{first}: {messages[0]}", details={"fields": fields}) from exc


def _check_key(org: Organization, key: Any, *, exclude_id: Any = None) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise _field_error("key", "Use 1-64 of a-z, 0-9, _ and -.")
    clash = Agent.objects.filter(org=org, key=key)
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise AgentKeyExists(details={"key": key})
    return key


def _check_provider(org: Organization, provider: Any) -> Provider | None:
    """``provider`` (a Provider, an id or None) as a provider of ``org``; others answer 400."""
    if provider is None or provider == "":
        return None
    if isinstance(provider, Provider):
        if provider.org_id != org.pk:
            raise _field_error(
                "provider", "No such provider in this organisation.", code="ERR_PROVIDER_NOT_FOUND"
            )
        return provider
    try:
        provider_id = provider if isinstance(provider, UUID) else UUID(str(provider))
    except (TypeError, ValueError, AttributeError) as exc:
        raise _field_error("provider", "Must be the id of a provider.") from exc
    found = Provider.objects.filter(org=org, pk=provider_id).first()
    if found is None:
        raise _field_error(
            "provider", "No such provider in this organisation.", code="ERR_PROVIDER_NOT_FOUND"
        )
    return found


def _registered_tools() -> list[str] | None:
    """Names in the tool registry, or None while there is none to check against."""
    try:
        from agents.tools.registry import tool_names
    except ImportError:  # pragma: no cover - the registry ships with the app
        return None
    return tool_names()


def _check_tools(tools: Any) -> list[str]:
    """A de-duplicated list of registered tool names (400 ``ERR_UNKNOWN_TOOL`` for others)."""
    if tools is None:
        return []
    if not isinstance(tools, list) or len(tools) > MAX_LIST_ITEMS:
        raise _field_error("tools", f"Must be a list of at most {MAX_LIST_ITEMS} tool names.")
    names: list[str] = []
    for name in tools:
        if not isinstance(name, str) or not name or len(name) > TOOL_NAME_MAX_LENGTH:
            raise _field_error("tools", f"Tool names are strings of 1-{TOOL_NAME_MAX_LENGTH} characters.")
        if name not in names:
            names.append(name)
    known = _registered_tools()
    if known is not None:
        unknown = [name for name in names if name not in known]
        if unknown:
            raise _field_error(
                "tools",
                f"Unknown tool(s): {', '.join(unknown)}. Known tools: {', '.join(known)}.",
                code="ERR_UNKNOWN_TOOL",
                unknown_tools=unknown,
            )
    return names


def clean_id_list(field: str, values: Any) -> list[str]:
    """A de-duplicated list of UUIDs as strings (the owning app checks they exist)."""
    if values is None:
        return []
    if not isinstance(values, list) or len(values) > MAX_LIST_ITEMS:
        raise _field_error(field, f"Must be a list of at most {MAX_LIST_ITEMS} ids.")
    ids: list[str] = []
    for value in values:
        try:
            text = str(value if isinstance(value, UUID) else UUID(str(value)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise _field_error(field, f"{value!r} is not a valid id.") from exc
        if text not in ids:
            ids.append(text)
    return ids


def _save_new(agent: Agent) -> Agent:
    """Insert, turning a key race lost to a concurrent insert into the 409; the org's plan must
    allow one more agent (403 ``ERR_PLAN_LIMIT``, through ``core.quotas``)."""
    check_limit(org=agent.org, resource="agents")
    try:
        with transaction.atomic():
            agent.save(force_insert=True)
    except IntegrityError as exc:
        raise AgentKeyExists(details={"key": agent.key}) from exc
    return agent


def free_agent_key(org: Organization, base: str, suffix: str) -> str:
    """``<base><suffix>``, else ``<base><suffix>-2``, ``-3``…: the first key free in the org."""
    for number in range(1, 1000):
        tail = suffix if number == 1 else f"{suffix}-{number}"
        candidate = f"{base[: KEY_MAX_LENGTH - len(tail)]}{tail}"
        if not Agent.objects.filter(org=org, key=candidate).exists():
            return candidate
    raise AgentKeyExists("No free key left for a copy of this agent; rename some copies first.")


def _apply_fields(agent: Agent, fields: dict[str, Any]) -> None:
    """Validate and set editable fields (those present in ``fields``) on ``agent``."""
    org = agent.org
    if "key" in fields:
        agent.key = _check_key(org, fields["key"], exclude_id=agent.pk if not agent._state.adding else None)
    if "name" in fields:
        name = (fields["name"] or "").strip()
        if not name:
            raise _field_error("name", "This field may not be blank.")
        agent.name = name
    if "description" in fields:
        agent.description = fields["description"] or ""
    if "provider" in fields:
        agent.provider = _check_provider(org, fields["provider"])
    if "model" in fields:
        agent.model = (fields["model"] or "").strip()
    if "system_prompt" in fields:
        prompt = fields["system_prompt"] or ""
        if len(prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise _field_error("system_prompt", f"At most {MAX_SYSTEM_PROMPT_CHARS} characters.")
        agent.system_prompt = prompt
    for number in ("temperature", "max_tokens"):
        if number in fields:
            setattr(agent, number, fields[number])
    if "max_tool_iterations" in fields:
        agent.max_tool_iterations = (
            20 if fields["max_tool_iterations"] is None else fields["max_tool_iterations"]
        )
    if "tools" in fields:
        agent.tools = _check_tools(fields["tools"])
    if "knowledge_bases" in fields:
        agent.knowledge_bases = clean_id_list("knowledge_bases", fields["knowledge_bases"])
    if "visibility" in fields:
        visibility = fields["visibility"]
        if visibility not in Agent.Visibility.values:
            raise _field_error("visibility", f"Must be one of: {', '.join(Agent.Visibility.values)}.")
        agent.visibility = visibility
    # Public means published: the marketplace lists public agents with their publication time.
    if agent.visibility == Agent.Visibility.PUBLIC:
        agent.published_at = agent.published_at or timezone.now()
    else:
        agent.published_at = None


def _locked(agent: Agent) -> Agent:
    """The agent's row, locked for this transaction (concurrent writers queue up)."""
    try:
        return Agent.objects.select_for_update(of=("self",)).select_related("org").get(pk=agent.pk)
    except Agent.DoesNotExist as exc:
        raise NotFoundError("Agent not found.") from exc


# --- create, update, delete --------------------------------------------------------------------


@transaction.atomic
def agent_create(
    *,
    org: Organization,
    actor: User | None,
    key: str,
    name: str,
    model: str = "",
    description: str = "",
    provider: Provider | UUID | str | None = None,
    system_prompt: str = "",
    temperature: float | None = None,
    max_tokens: int | None = None,
    max_tool_iterations: int = 20,
    tools: list[str] | None = None,
    knowledge_bases: list[Any] | None = None,
    visibility: str = Agent.Visibility.ORG,
) -> Agent:
    """Make an agent owned by ``actor``; a key already used in the org answers 409."""
    agent = Agent(org=org, owner=actor if getattr(actor, "is_authenticated", False) else None)
    _apply_fields(
        agent,
        {
            "key": key,
            "name": name,
            "description": description,
            "provider": provider,
            "model": model,
            "system_prompt": system_prompt,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "max_tool_iterations": max_tool_iterations,
            "tools": tools,
            "knowledge_bases": knowledge_bases,
            "visibility": visibility,
        },
    )
    _full_clean(agent)
    _save_new(agent)
    audit_record(org=org, actor=actor, action="agent.created", entity=agent, after=_snapshot(agent))
    _announce(agent, "created")
    return agent


@transaction.atomic
def agent_update(*, agent: Agent, actor: User | None, actor_role: str | None = None, **fields: Any) -> Agent:
    """Change any of ``EDITABLE_FIELDS`` (owner or ADMIN+); moving off ``public`` unpublishes."""
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(f"Not editable: {', '.join(sorted(unknown))}.")
    agent = _locked(agent)
    _require_editor(agent, actor, actor_role)
    before = _snapshot(agent)
    _apply_fields(agent, fields)
    _full_clean(agent)
    try:
        with transaction.atomic():
            agent.save()
    except IntegrityError as exc:
        raise AgentKeyExists(details={"key": agent.key}) from exc
    after = _snapshot(agent)
    if after != before:
        audit_record(
            org=agent.org, actor=actor, action="agent.updated", entity=agent, before=before, after=after
        )
        _announce(agent, "updated")
    return agent


@transaction.atomic
def agent_delete(*, agent: Agent, actor: User | None, actor_role: str | None = None) -> None:
    """Delete an agent (owner or ADMIN+) and revoke the agent keys bound to it."""
    from accounts.services.keys import api_key_revoke

    agent = _locked(agent)
    _require_editor(agent, actor, actor_role)
    keys = ApiKey.objects.filter(
        org=agent.org, kind=ApiKey.Kind.AGENT, agent_id=agent.pk, revoked_at__isnull=True
    ).select_related("org")
    for key in keys:
        api_key_revoke(key=key, actor=actor)
    before = _snapshot(agent)
    agent_id, org = agent.pk, agent.org
    agent.delete()
    audit_record(
        org=org, actor=actor, action="agent.deleted", entity_type="agent", entity_id=agent_id, before=before
    )
    agent.pk = agent_id
    _announce(agent, "deleted")


@transaction.atomic
def agent_duplicate(*, agent: Agent, actor: User) -> Agent:
    """A stopped, unpublished copy owned by ``actor``, keyed ``<key>-copy[-n]``.

    Skills are not copied: they are granted per agent by ADMINs. A public source gives an
    org-visible copy (publishing is a separate, explicit step).
    """
    source = agent
    visibility = source.visibility if source.visibility != Agent.Visibility.PUBLIC else Agent.Visibility.ORG
    copy = Agent(
        org=source.org,
        owner=actor,
        key=free_agent_key(source.org, source.key, "-copy"),
        name=f"{source.name} (copy)"[:NAME_MAX_LENGTH],
        description=source.description,
        provider=source.provider,
        model=source.model,
        system_prompt=source.system_prompt,
        temperature=source.temperature,
        max_tokens=source.max_tokens,
        max_tool_iterations=source.max_tool_iterations,
        tools=list(source.tools or []),
        knowledge_bases=list(source.knowledge_bases or []),
        visibility=visibility,
        status=Agent.Status.STOPPED,
        forked_from=source,
    )
    _full_clean(copy)
    _save_new(copy)
    audit_record(
        org=copy.org,
        actor=actor,
        action="agent.duplicated",
        entity=copy,
        after={**_snapshot(copy), "source": str(source.pk)},
    )
    _announce(copy, "created")
    return copy


@transaction.atomic
def agent_publish(*, agent: Agent, actor: User | None, actor_role: str | None = None) -> Agent:
    """List the agent on the marketplace (owner or ADMIN+); publishing twice changes nothing.

    Unpublish with an update of ``visibility`` to ``org`` or ``private``.
    """
    agent = _locked(agent)
    _require_editor(agent, actor, actor_role)
    if agent.visibility == Agent.Visibility.PUBLIC and agent.published_at is not None:
        return agent
    before = _snapshot(agent)
    agent.visibility = Agent.Visibility.PUBLIC
    agent.published_at = timezone.now()
    agent.save(update_fields=["visibility", "published_at", "updated_at"])
    audit_record(
        org=agent.org,
        actor=actor,
        action="agent.published",
        entity=agent,
        before=before,
        after=_snapshot(agent),
    )
    _announce(agent, "updated")
    return agent


# --- shares ------------------------------------------------------------------------------------


@transaction.atomic
def agent_share_add(
    *, agent: Agent, actor: User | None, user_id: Any, actor_role: str | None = None
) -> tuple[AgentShare, bool]:
    """Share the agent with a member of its org (owner or ADMIN+); ``(share, created)``.

    Sharing twice is harmless (the existing share comes back). Shares matter while the agent is
    ``private``; on an org-visible agent they take effect if it is made private later.
    """
    agent = _locked(agent)
    _require_editor(agent, actor, actor_role)
    membership = Membership.objects.select_related("user").filter(org=agent.org, user_id=user_id).first()
    if membership is None:
        raise _field_error("user_id", "Not a member of this organisation.", code="ERR_NOT_A_MEMBER")
    if membership.user_id == agent.owner_id:
        raise _field_error("user_id", "This member owns the agent already.")
    share, created = AgentShare.objects.get_or_create(agent=agent, user=membership.user)
    if created:
        audit_record(
            org=agent.org,
            actor=actor,
            action="agent.shared",
            entity=agent,
            after={"user": str(membership.user_id), "email": membership.user.email},
        )
        _announce(agent, "updated")
    return share, created


@transaction.atomic
def agent_share_remove(
    *, agent: Agent, actor: User | None, user_id: Any, actor_role: str | None = None
) -> None:
    """Stop sharing the agent with a member (owner or ADMIN+); 404 when it was not shared."""
    agent = _locked(agent)
    _require_editor(agent, actor, actor_role)
    share = AgentShare.objects.select_related("user").filter(agent=agent, user_id=user_id).first()
    if share is None:
        raise NotFoundError("The agent is not shared with this user.", code="ERR_SHARE_NOT_FOUND")
    before = {"user": str(share.user_id), "email": share.user.email}
    share.delete()
    audit_record(org=agent.org, actor=actor, action="agent.unshared", entity=agent, before=before)
    _announce(agent, "updated")


# --- lifecycle ---------------------------------------------------------------------------------


def _set_status(agent: Agent, actor: User | None, status: str, action: str, change: str) -> Agent:
    agent = _locked(agent)
    before = agent.status
    if before != status or change == "restarted":
        agent.status = status
        agent.save(update_fields=["status", "updated_at"])
        audit_record(
            org=agent.org,
            actor=actor,
            action=action,
            entity=agent,
            before={"status": before},
            after={"status": status},
        )
        _announce(agent, change)
    return agent


@transaction.atomic
def agent_start(*, agent: Agent, actor: User | None) -> Agent:
    """Mark the agent running (its desired state); it shows online once it sends heartbeats."""
    return _set_status(agent, actor, Agent.Status.RUNNING, "agent.started", "started")


@transaction.atomic
def agent_stop(*, agent: Agent, actor: User | None) -> Agent:
    """Mark the agent stopped; a stopped agent is never online."""
    return _set_status(agent, actor, Agent.Status.STOPPED, "agent.stopped", "stopped")


@transaction.atomic
def agent_restart(*, agent: Agent, actor: User | None) -> Agent:
    """Ask the agent to restart: running again, and a ``restarted`` event its process can act on."""
    return _set_status(agent, actor, Agent.Status.RUNNING, "agent.restarted", "restarted")


@transaction.atomic
def agent_heartbeat(*, agent: Agent, actor: User | None, now: datetime | None = None) -> Agent:
    """Record that the agent is alive (and running). Only a status change is audited.

    A conditional UPDATE decides whether this beat started the agent, so two concurrent beats of a
    stopped agent audit one start between them.
    """
    now = now or timezone.now()
    started = (
        Agent.objects.filter(pk=agent.pk)
        .exclude(status=Agent.Status.RUNNING)
        .update(status=Agent.Status.RUNNING, last_heartbeat_at=now, updated_at=now)
    )
    if not started and not Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=now):
        raise NotFoundError("Agent not found.")
    agent.refresh_from_db(fields=["status", "last_heartbeat_at", "updated_at"])
    if started:
        audit_record(
            org=agent.org,
            actor=actor,
            action="agent.started",
            entity=agent,
            before={"status": Agent.Status.STOPPED},
            after={"status": Agent.Status.RUNNING, "by": "heartbeat"},
        )
    _announce(agent, "started" if started else "heartbeat")
    return agent
