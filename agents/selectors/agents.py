"""Reads of agents: who may see which agent, the marketplace, shares, the online state, the
system-prompt preview and the rows the status stream sends.

Visibility is decided here and nowhere else (views and the stream call these functions):

- ``org`` and ``public`` agents are seen by every member of their org;
- ``private`` agents by their owner and by the members they are shared with;
- ADMINs and OWNERs see every agent of their org, because they may edit and delete any of them;
- an agent key (an API key of kind ``agent``) sees only the agent it is bound to, whatever its role.

Who may *change* an agent is a different question (its owner or an ADMIN+), answered by
:func:`agent_can_edit` and enforced in ``agents.services.agents``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from accounts.models import Membership, Organization, Role, User
from agents import lookup_cache
from agents.models import Agent, AgentShare
from core.errors import NotFoundError

DEFAULT_OFFLINE_AFTER = 300


@dataclass(frozen=True)
class AgentViewer:
    """Who is looking: the user, the role they act with, and the agent an agent key is bound to.

    ``bound_agent_id`` is set for agent keys only; it confines every read to that one agent.
    """

    user: User | None
    role: str | None
    bound_agent_id: UUID | None = None

    @property
    def is_admin(self) -> bool:
        return Role.rank(self.role) >= Role.rank(Role.ADMIN)


def offline_after_seconds() -> int:
    """Seconds without a heartbeat after which an agent shows offline (``AGENT_OFFLINE_AFTER``)."""
    return int(getattr(settings, "AGENT_OFFLINE_AFTER", DEFAULT_OFFLINE_AFTER))


def agent_online(agent: Agent, *, now: datetime | None = None) -> bool:
    """Online = running and a heartbeat within ``AGENT_OFFLINE_AFTER`` seconds.

    A stopped agent is never online; a running one that stopped beating goes offline by itself,
    without any write, so clients can compute the same from ``last_heartbeat_at``.
    """
    if agent.status != Agent.Status.RUNNING or agent.last_heartbeat_at is None:
        return False
    now = now or timezone.now()
    return now - agent.last_heartbeat_at < timedelta(seconds=offline_after_seconds())


def _visible_filter(viewer: AgentViewer) -> Q:
    """The Q that keeps the agents ``viewer`` may see (within an org already filtered for)."""
    if viewer.bound_agent_id is not None:
        return Q(pk=viewer.bound_agent_id)
    if viewer.is_admin:
        return Q()
    if viewer.user is None:
        return Q(visibility__in=[Agent.Visibility.ORG, Agent.Visibility.PUBLIC])
    shared = AgentShare.objects.filter(agent=OuterRef("pk"), user=viewer.user)
    return (
        Q(visibility__in=[Agent.Visibility.ORG, Agent.Visibility.PUBLIC])
        | Q(owner=viewer.user)
        | Q(Exists(shared))
    )


def agent_list(
    *,
    org: Organization,
    viewer: AgentViewer,
    visibility: str | None = None,
    status: str | None = None,
    owner_id: UUID | None = None,
    search: str | None = None,
) -> QuerySet[Agent]:
    """The org's agents that ``viewer`` may see, optionally filtered; ordered by name."""
    agents = (
        Agent.objects.filter(org=org)
        .filter(_visible_filter(viewer))
        .select_related("owner", "provider")
        .order_by("name", "id")
    )
    if visibility:
        agents = agents.filter(visibility=visibility)
    if status:
        agents = agents.filter(status=status)
    if owner_id:
        agents = agents.filter(owner_id=owner_id)
    if search:
        agents = agents.filter(Q(name__icontains=search) | Q(key__icontains=search))
    return agents


def _visible_without_shares(agent: Agent, viewer: AgentViewer) -> bool | None:
    """``_visible_filter`` for one row in memory; None when only the agent's shares can tell."""
    if viewer.bound_agent_id is not None:
        return agent.pk == viewer.bound_agent_id
    if viewer.is_admin:
        return True
    if agent.visibility in (Agent.Visibility.ORG, Agent.Visibility.PUBLIC):
        return True
    if viewer.user is None:
        return False
    return True if agent.owner_id == viewer.user.pk else None


def _agent_ref(key: str | None, agent_id: Any) -> str:
    return f"id:{agent_id}" if agent_id is not None else f"key:{key}"


def _agent_row(*, org_id: Any, key: str | None = None, agent_id: Any = None) -> Agent | None:
    """The org's agent named by key or id, whoever asks: from ``agents.lookup_cache``, else one
    lean query (and then cached)."""
    ref = _agent_ref(key, agent_id)
    agent, generation = lookup_cache.cached_agent(org_id, ref)
    if agent is None:
        agents = Agent.objects.filter(org_id=org_id)
        agents = agents.filter(pk=agent_id) if agent_id is not None else agents.filter(key=key)
        agent = agents.order_by().first()
        if agent is None:
            return None
        lookup_cache.store(org_id, ref, agent, generation)
    return agent


def agent_for_run(*, org: Organization, viewer: AgentViewer, key: str | None = None, agent_id: Any = None):
    """The agent a run names by key or id, if ``viewer`` may see it, else None; with its org
    attached. On the path to every turn's model call: the row comes from ``agents.lookup_cache``
    (one cache round trip) or one lean query, and who may see it is decided here, per call (a
    private agent shared with the viewer costs one more query)."""
    agent = _agent_row(org_id=org.pk, key=key, agent_id=agent_id)
    if agent is None:
        return None
    visible = _visible_without_shares(agent, viewer)
    if visible is None:
        visible = AgentShare.objects.filter(agent_id=agent.pk, user=viewer.user).exists()
    if not visible:
        return None
    agent.org = org  # the row is the org's: spare the run a query (and a thread hop) for it
    return agent


async def aagent_for_run(
    *, org: Organization, viewer: AgentViewer, key: str | None = None, agent_id: Any = None
):
    """:func:`agent_for_run` from the event loop: a cached row whose visibility needs no query is
    answered on the loop (``core.aredis``); a miss is read on a pool thread, once for all the
    runs of a burst that name the same agent at that moment (``core.db_threads.run_db_shared``),
    and a private agent that only its shares can open is read there too."""
    from core import aredis
    from core.db_threads import run_db, run_db_shared

    if settings.AGENT_CACHE_SECONDS > 0:
        ref = _agent_ref(key, agent_id)
        # The generation as the request's key lookup read it: a row this process kept under it
        # needs no round trip (``agents.lookup_cache.local_get``).
        agent = lookup_cache.local_get(org.pk, ref, aredis.read_with_key(lookup_cache.GENERATION_KEY))
        if agent is None:
            read = await aredis.cache_get_many_and_count(lookup_cache.lookup_keys(org.pk, ref))
            if read is None:
                return await run_db(agent_for_run, org=org, viewer=viewer, key=key, agent_id=agent_id)
            agent, generation = lookup_cache.lookup_from(read[0], org.pk, ref)
            if agent is None:  # expired or invalidated: one read for the whole burst that asks now
                shared = await run_db_shared(
                    ("agent", org.pk, ref), _agent_row, org_id=org.pk, key=key, agent_id=agent_id
                )
                if shared is None:
                    return None
                agent = copy.deepcopy(shared)  # each run its own row, as a cache hit gives it
            lookup_cache.local_store(org.pk, ref, generation, agent)
        visible = _visible_without_shares(agent, viewer)
        if visible is not None:
            if not visible:
                return None
            agent.org = org
            return agent
    return await run_db(agent_for_run, org=org, viewer=viewer, key=key, agent_id=agent_id)


def agent_get(*, org: Organization, viewer: AgentViewer, agent_id: Any) -> Agent:
    """One agent ``viewer`` may see; anything else (other orgs, private ones) answers 404."""
    agent = agent_list(org=org, viewer=viewer).filter(pk=agent_id).first()
    if agent is None:
        raise NotFoundError("Agent not found.")
    return agent


def agent_can_edit(*, agent: Agent, viewer: AgentViewer) -> bool:
    """Owner of the agent, or ADMIN+ of its org (agent keys never edit agents)."""
    if viewer.bound_agent_id is not None:
        return False
    if viewer.is_admin:
        return True
    return viewer.user is not None and agent.owner_id == viewer.user.pk


def agent_share_list(*, agent: Agent) -> QuerySet[AgentShare]:
    """Whom a private agent is shared with, oldest share first."""
    return AgentShare.objects.filter(agent=agent).select_related("user").order_by("created_at", "id")


def marketplace_agent_list(*, search: str | None = None) -> QuerySet[Agent]:
    """Published agents of every org (``visibility=public`` with ``published_at``), newest first.

    Orgs that asked to be deleted drop off the marketplace at once.
    """
    agents = (
        Agent.objects.filter(visibility=Agent.Visibility.PUBLIC, published_at__isnull=False)
        .filter(org__deletion_requested_at__isnull=True)
        .select_related("org")
        .order_by("-published_at", "id")
    )
    if search:
        agents = agents.filter(Q(name__icontains=search) | Q(description__icontains=search))
    return agents


# --- the status stream -------------------------------------------------------------------------


def agent_status_row(agent: Agent, *, now: datetime | None = None) -> dict[str, Any]:
    """What the status stream and the lifecycle answers say about an agent (JSON-ready)."""
    return {
        "id": str(agent.pk),
        "key": agent.key,
        "name": agent.name,
        "status": agent.status,
        "online": agent_online(agent, now=now),
        "last_heartbeat_at": agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None,
    }


def agent_status_rows(
    *, org_id: UUID, viewer: AgentViewer, agent_id: UUID | None = None
) -> dict[str, dict[str, Any]]:
    """Status rows of the agents ``viewer`` sees in the org (or of one of them), by agent id."""
    agents = (
        Agent.objects.filter(org_id=org_id)
        .filter(_visible_filter(viewer))
        .only("id", "key", "name", "status", "last_heartbeat_at")
        .order_by("name", "id")
    )
    if agent_id is not None:
        agents = agents.filter(pk=agent_id)
    now = timezone.now()
    return {str(agent.pk): agent_status_row(agent, now=now) for agent in agents}


def stream_viewer_role(*, org_id: UUID, viewer: AgentViewer, api_key_id: UUID | None) -> str | None:
    """The role the stream's caller has now (None: they lost access and the stream must end).

    Sessions and personal keys follow the user's membership; service and agent keys their own
    row (revoked, deleted, paused or expired keys lose access).
    """
    if api_key_id is not None:
        from accounts.authentication import effective_role
        from accounts.models import ApiKey

        key = (
            ApiKey.objects.select_related("user")
            .filter(pk=api_key_id, org_id=org_id, is_active=True, revoked_at__isnull=True)
            .filter(deleted_at__isnull=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now()))
            .first()
        )
        if key is None:
            return None
        if key.kind == ApiKey.Kind.PERSONAL:
            key.member_role = (
                Membership.objects.filter(org_id=org_id, user_id=key.user_id)
                .values_list("role", flat=True)
                .first()
            )
        return effective_role(key)
    if viewer.user is None:
        return None
    return Membership.objects.filter(org_id=org_id, user=viewer.user).values_list("role", flat=True).first()


# --- system prompt preview ---------------------------------------------------------------------

# ``{{ name }}``: the variable syntax of Django templates, and nothing else of them (no tags, no
# filters, no attribute access). See agent_system_prompt_render for why.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.]*)\s*\}\}")

PROMPT_VARIABLES = {
    "agent_name": "the agent's name",
    "agent_key": "the agent's key",
    "agent_description": "the agent's description",
    "model": "the agent's model",
    "org_name": "the organisation's name",
    "user_name": "the display name (else e-mail) of the person talking to the agent",
    "now": "current date and time, UTC, ISO 8601",
    "date": "current date, UTC (YYYY-MM-DD)",
    "time": "current time, UTC (HH:MM)",
    "tools": "comma-separated names of the agent's tools",
    "skills": "comma-separated skills granted to the agent",
}


def agent_prompt_context(*, agent: Agent, user: User | None, now: datetime | None = None) -> dict[str, str]:
    """The values the system prompt's ``{{ variables }}`` render with."""
    now = (now or timezone.now()).astimezone(UTC)
    user_name = ""
    if user is not None and getattr(user, "is_authenticated", False):
        user_name = (getattr(user, "display_name", "") or getattr(user, "email", "") or "").strip()
    return {
        "agent_name": agent.name,
        "agent_key": agent.key,
        "agent_description": agent.description,
        "model": agent.model,
        "org_name": agent.org.name,
        "user_name": user_name,
        "now": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M"),
        "tools": ", ".join(str(name) for name in agent.tools or []),
        "skills": ", ".join(str(skill) for skill in agent.skills or []),
    }


def agent_system_prompt_render(
    *, agent: Agent, user: User | None, now: datetime | None = None
) -> tuple[str, dict[str, str], list[str]]:
    """The agent's system prompt with its ``{{ variables }}`` filled in.

    Returns ``(rendered, context, unknown variable names)``; unknown variables render empty and
    nothing here can fail. Deliberately not the full Django template engine: prompts are
    user-written text, and the engine's tags (``{% include %}`` reads template files,
    ``{% debug %}`` dumps the context and loaded modules) would turn them into a way to read the
    server; ``str.format_map`` would choke on the braces of every JSON example in a prompt and
    allows attribute access. The ``{{ name }}`` syntax stays compatible with Django templates.
    """
    context = agent_prompt_context(agent=agent, user=user, now=now)
    unknown: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in context:
            return context[name]
        if name not in unknown:
            unknown.append(name)
        return ""

    return _PLACEHOLDER.sub(substitute, agent.system_prompt or ""), context, unknown
