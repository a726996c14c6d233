"""Reads of API keys: which keys a caller may see, one key, and a key's request log.

Visibility is decided here and nowhere else: ADMIN and OWNER see every key of their org, anyone
else only the keys they own (``ApiKey.user``). Soft-deleted keys are gone for everyone.
"""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet

from accounts.models import ApiKey, ApiKeyUsage, Organization, Role, User
from core.errors import NotFoundError


def _sees_all_keys(role: str | None) -> bool:
    return Role.rank(role) >= Role.rank(Role.ADMIN)


def api_key_list(
    *,
    org: Organization,
    user: User,
    role: str | None,
    kind: str | None = None,
    user_id: UUID | None = None,
) -> QuerySet[ApiKey]:
    """The org's live keys the caller may see, newest first, optionally filtered by kind/user."""
    keys = ApiKey.objects.filter(org=org, deleted_at__isnull=True)
    if not _sees_all_keys(role):
        keys = keys.filter(user=user)
    if kind:
        keys = keys.filter(kind=kind)
    if user_id:
        keys = keys.filter(user_id=user_id)
    return keys.order_by("-created_at")


def api_key_get(*, org: Organization, user: User, role: str | None, key_id: UUID) -> ApiKey:
    """One key the caller may see; 404 for other orgs' keys and for other people's keys."""
    key = api_key_list(org=org, user=user, role=role).filter(pk=key_id).first()
    if key is None:
        raise NotFoundError("API key not found.", code="ERR_NOT_FOUND")
    return key


def api_key_usage_list(*, key: ApiKey) -> QuerySet[ApiKeyUsage]:
    """The key's request log, newest first (served by the ``(key, -at)`` index)."""
    return ApiKeyUsage.objects.filter(key=key).order_by("-at", "-id")
