"""Hooks that higher apps fill from ``AppConfig.ready()`` so `accounts` never imports them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

# (org, agent_id) -> bool: does this agent exist in this org? Registered by the agents app.
AgentResolver = Callable[[Any, UUID], bool]

_agent_resolver: AgentResolver | None = None


def register_agent_resolver(resolver: AgentResolver) -> AgentResolver:
    """The agents app says which agent ids exist, so agent keys can be bound to one."""
    global _agent_resolver
    _agent_resolver = resolver
    return resolver


def agent_exists(org: Any, agent_id: UUID) -> bool:
    """False when no agents app is installed or the agent is not in ``org``."""
    return _agent_resolver is not None and bool(_agent_resolver(org, agent_id))
