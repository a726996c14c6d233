"""What each org role may do, as one table: the source of ``GET /api/v1/me/permissions``.

Views enforce roles with ``HasOrgRole`` (least role per method) and keys with ``HasKeyScope``
(``<area>:read`` / ``<area>:write``). This table states the same rules in one place, so that a
console can grey out what the caller may not do. Areas use the same names as key scopes.

Permissions are strings ``<area>:<action>``; ``read`` and ``write`` follow API.md's role column,
and a few stronger actions (``org:delete``) need more than the area's ``write``.
"""

from __future__ import annotations

from accounts.models import Role
from accounts.permissions import scope_allows

# area → (least role to read, least role to write); None = no org role grants it. The areas are
# the key scope areas of ``accounts.scopes`` (one per API surface).
AREA_ROLES: dict[str, tuple[str | None, str | None]] = {
    # accounts
    "org": (Role.VIEWER, Role.ADMIN),
    "members": (Role.VIEWER, Role.ADMIN),
    "invites": (Role.ADMIN, Role.ADMIN),
    "groups": (Role.VIEWER, Role.ADMIN),
    "keys": (Role.MEMBER, Role.MEMBER),
    "activity": (Role.MEMBER, None),
    "security": (Role.OWNER, None),
    # core
    "jobs": (Role.VIEWER, None),
    "license": (Role.VIEWER, None),
    "search": (Role.VIEWER, None),
    "notifications": (Role.VIEWER, Role.VIEWER),
    "system_configs": (Role.VIEWER, Role.ADMIN),
    "tenant": (Role.OWNER, Role.OWNER),
    "webhooks": (Role.ADMIN, Role.ADMIN),
    # agents
    "providers": (Role.VIEWER, Role.ADMIN),
    "models": (Role.VIEWER, None),
    "agents": (Role.VIEWER, Role.MEMBER),
    "skills": (Role.MEMBER, Role.MEMBER),
    "tools": (Role.VIEWER, Role.ADMIN),
    "mcp": (Role.ADMIN, Role.ADMIN),
    "agent_tasks": (Role.ADMIN, Role.ADMIN),
    "crons": (Role.ADMIN, Role.ADMIN),
    # chat
    "conversations": (Role.MEMBER, Role.MEMBER),
    "chat": (Role.MEMBER, Role.MEMBER),
    "ai": (Role.MEMBER, Role.MEMBER),
    # knowledge
    "knowledge": (Role.VIEWER, Role.MEMBER),
    "memory": (Role.MEMBER, Role.MEMBER),
    # billing
    "usage": (Role.ADMIN, Role.ADMIN),
    "billing": (Role.VIEWER, Role.OWNER),
    # boards
    "boards": (Role.VIEWER, Role.MEMBER),
}

# Actions that differ from their area's read/write: permission → least role.
EXTRA_PERMISSIONS: dict[str, str] = {
    "org:delete": Role.OWNER,
    "members:manage_owners": Role.OWNER,
    "billing:consume_credits": Role.MEMBER,
    "billing:grant_credits": Role.OWNER,
}


def _reaches(role: str | None, needed: str | None) -> bool:
    return needed is not None and Role.rank(role) >= Role.rank(needed)


def permissions_for_role(role: str | None) -> list[str]:
    """Every permission an org role grants, sorted; an empty list for no role."""
    granted: set[str] = set()
    for area, (read_role, write_role) in AREA_ROLES.items():
        if _reaches(role, read_role):
            granted.add(f"{area}:read")
        if _reaches(role, write_role):
            granted.add(f"{area}:write")
    granted.update(perm for perm, needed in EXTRA_PERMISSIONS.items() if _reaches(role, needed))
    return sorted(granted)


def permissions_for_key(role: str | None, scopes: list[str] | None) -> list[str]:
    """A key's permissions: its role's, cut down to what its scopes allow (no scopes = all)."""
    return [
        perm
        for perm in permissions_for_role(role)
        if scope_allows(scopes or [], perm.split(":", 1)[0], perm.split(":", 1)[1] != "read")
    ]
