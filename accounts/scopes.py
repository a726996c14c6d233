"""The scope areas an API key may be limited to, and the grammar of a scope.

A scope is ``"*"`` (everything the key's role allows) or ``"<area>:<access>"`` with access
``read``, ``write`` (implies read) or ``*``. Views name their area with ``scope_area`` and
``accounts.permissions.HasKeyScope`` enforces it. Keeping the list here (rather than accepting any
string) means a typo such as ``"agent:write"`` is refused when the key is made, instead of silently
producing a key that can do nothing.

Areas are lower case with underscores; each maps to the API paths named beside it. Higher apps that
add a surface not listed here call :func:`register_scope_area` from their ``AppConfig.ready()``.
"""

from __future__ import annotations

import re

ACCESS_LEVELS = ("read", "write", "*")
ALL = "*"

# area -> the API surface it covers (shown in the OpenAPI description of the key endpoints).
_AREAS: dict[str, str] = {
    # accounts
    "me": "/api/v1/me, /me/permissions",
    "org": "/api/v1/org",
    "members": "/api/v1/org/members",
    "invites": "/api/v1/org/invites",
    "groups": "/api/v1/org/groups",
    "keys": "/api/v1/api-keys",
    "activity": "/api/v1/activity",
    "security": "/api/v1/security-events",
    # core
    "jobs": "/api/v1/jobs",
    "license": "/api/v1/license",
    "search": "/api/v1/search",
    "notifications": "/api/v1/notifications",
    "system_configs": "/api/v1/system-configs",
    "tenant": "/api/v1/tenant/backup, /tenant/restore",
    "webhooks": "/api/v1/webhooks",
    # agents
    "providers": "/api/v1/providers, /org/ai-config, /me/ai-config",
    "models": "/api/v1/models, /v1/models",
    "agents": "/api/v1/agents, /marketplace",
    "skills": "/api/v1/skills",
    "tools": "/api/v1/tools",
    "mcp": "/api/v1/mcp, /mcp, /api/mcp",
    "agent_tasks": "/api/v1/agent-tasks",
    "crons": "/api/v1/crons",
    # chat
    "conversations": "/api/v1/conversations",
    "chat": "/api/v1/chat, /v1/chat/completions, /v1/responses, /ws",
    "ai": "/api/v1/ai",
    # knowledge
    "knowledge": "/api/v1/knowledge, /admin/rag",
    "memory": "/api/v1/agents/{id}/memory, /kg, /episodic",
    # billing
    "usage": "/api/v1/usage, /usage-caps, /model-pricing",
    "billing": "/api/v1/billing, /credits",
    # boards
    "boards": "/api/v1/boards, /board-groups, /agent/boards, /metrics/dashboard",
}

_AREA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def register_scope_area(area: str, description: str = "") -> str:
    """Make ``area`` a valid scope area (idempotent); returns it for use as ``scope_area``."""
    if not _AREA_NAME.match(area):
        raise ValueError(f"scope area {area!r} must match {_AREA_NAME.pattern}")
    _AREAS.setdefault(area, description)
    return area


def scope_areas() -> list[str]:
    """Every known area, sorted."""
    return sorted(_AREAS)


def describe_areas() -> str:
    """One line per area, for documentation."""
    return "\n".join(f"- `{area}`: {_AREAS[area]}" for area in scope_areas())


def scope_problem(scope: object) -> str | None:
    """Why ``scope`` is not a valid scope, or None when it is."""
    if not isinstance(scope, str):
        return "a scope must be a string"
    if scope == ALL:
        return None
    area, sep, access = scope.partition(":")
    if not sep or access not in ACCESS_LEVELS:
        return f"{scope!r} is not '*' or '<area>:read|write|*'"
    if area not in _AREAS:
        return f"{scope!r} names an unknown area {area!r}"
    return None


def invalid_scopes(scopes: list) -> list[str]:
    """The entries of ``scopes`` that are not valid, as given (empty when all are valid)."""
    return [str(scope) for scope in scopes if scope_problem(scope) is not None]


def normalise_scopes(scopes: list[str]) -> list[str]:
    """Deduplicate, keeping the caller's order; ``"*"`` alone covers everything."""
    unique = list(dict.fromkeys(scopes))
    return [ALL] if ALL in unique else unique


def scope_covers(granted: list[str], wanted: str) -> bool:
    """Whether the scopes ``granted`` include everything ``wanted`` gives (empty = all)."""
    if not granted or ALL in granted:
        return True
    if wanted == ALL:
        return False
    area, _, access = wanted.partition(":")
    if f"{area}:*" in granted:
        return True
    if access == "read":
        return f"{area}:read" in granted or f"{area}:write" in granted
    return f"{area}:write" in granted  # "<area>:write" and "<area>:*" both mean read + write
