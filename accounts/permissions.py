"""DRF permissions: least org role per action, API key scopes, platform staff.

Views declare what they need instead of checking by hand::

    read_role = Role.VIEWER          # safe methods
    write_role = Role.ADMIN          # everything else
    action_roles = {"destroy": Role.OWNER}
    scope_area = "members"           # API keys need members:read / members:write
"""

from __future__ import annotations

from rest_framework import permissions

from accounts.models import ApiKey, Role
from core.errors import PermissionDeniedError


class NoOrganisation(PermissionDeniedError):
    code = "ERR_NO_ORGANISATION"
    message = "You are not a member of any organisation; create one or accept an invite first."


def required_role(request, view) -> str:
    """The least role this request needs on this view."""
    action = getattr(view, "action", None)
    action_roles = getattr(view, "action_roles", {}) or {}
    if action in action_roles:
        return action_roles[action]
    method_roles = getattr(view, "method_roles", {}) or {}
    if request.method in method_roles:
        return method_roles[request.method]
    if request.method in permissions.SAFE_METHODS:
        return getattr(view, "read_role", Role.VIEWER)
    return getattr(view, "write_role", Role.MEMBER)


class HasOrgRole(permissions.BasePermission):
    """The caller acts in an org (``request.org``) with at least the role the view asks for."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False  # DRF answers 401
        if getattr(request, "org", None) is None:
            raise NoOrganisation()
        needed = required_role(request, view)
        if Role.rank(getattr(request, "role", None)) < Role.rank(needed):
            raise PermissionDeniedError(
                f"This action needs the {needed} role; you have {request.role}.",
                code="ERR_ROLE_REQUIRED",
                details={"required_role": needed, "role": request.role},
            )
        return True


def scope_allows(scopes: list[str], area: str, write: bool) -> bool:
    """Whether key scopes cover ``area``: ``*``, ``area:*``, ``area:write`` (implies read)."""
    if not scopes:
        return True  # a key without scopes has every scope its role allows
    wanted = {"*", f"{area}:*", f"{area}:write"}
    if not write:
        wanted.add(f"{area}:read")
    return bool(wanted & set(scopes))


class HasKeyScope(permissions.BasePermission):
    """An API key with scopes may only reach the areas its scopes name."""

    def has_permission(self, request, view) -> bool:
        key = request.auth if isinstance(request.auth, ApiKey) else None
        area = getattr(view, "scope_area", None)
        if key is None or area is None:
            return True
        write = request.method not in permissions.SAFE_METHODS
        if not scope_allows(key.scopes or [], area, write):
            needed = f"{area}:{'write' if write else 'read'}"
            raise PermissionDeniedError(
                f"This API key lacks the {needed} scope.",
                code="ERR_SCOPE_REQUIRED",
                details={"required_scope": needed},
            )
        return True


class IsStaff(permissions.BasePermission):
    """Platform staff only (``is_staff``)."""

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        if not request.user.is_staff:
            raise PermissionDeniedError("Platform staff only.", code="ERR_STAFF_ONLY")
        return True


class SessionOnly(permissions.BasePermission):
    """Endpoints that only a browser session may call (API keys answer 403)."""

    def has_permission(self, request, view) -> bool:
        if isinstance(request.auth, ApiKey):
            raise PermissionDeniedError("This endpoint needs a browser session.", code="ERR_SESSION_REQUIRED")
        return True
