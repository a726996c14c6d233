"""Reads behind authentication: the membership a request acts through, and key lookup."""

from __future__ import annotations

from django.db.models import OuterRef, Subquery

from accounts import auth_cache
from accounts.models import ApiKey, Membership, User


def membership_for_request(*, user: User, org_id: str | None = None) -> Membership | None:
    """The membership a request acts through: the named org, else the active org, else the first."""
    memberships = Membership.objects.select_related("org").filter(
        user=user, org__deletion_requested_at__isnull=True
    )
    if org_id:
        return memberships.filter(org_id=org_id).first()
    if user.active_org_id:
        found = memberships.filter(org_id=user.active_org_id).first()
        if found is not None:
            return found
    return memberships.first()


def _api_key_from_db(public_id: str) -> ApiKey | None:
    """The key with its org, its user and the user's current role in the org (``member_role``)."""
    member_role = Membership.objects.filter(org_id=OuterRef("org_id"), user_id=OuterRef("user_id")).values(
        "role"
    )[:1]
    return (
        ApiKey.objects.select_related("org", "user")
        .annotate(member_role=Subquery(member_role))
        .filter(public_id=public_id, deleted_at__isnull=True)
        .first()
    )


def api_key_for_auth(*, public_id: str) -> ApiKey | None:
    """The key row with its org, user and the user's current role in that org.

    A cache hit (see ``accounts.auth_cache``), else one indexed query. ``member_role`` is None when
    the key's user is no longer a member of the key's org.
    """
    return api_key_for_auth_counting(public_id=public_id, counter=None)[0]


def api_key_for_auth_counting(
    *, public_id: str, counter: tuple[str, int] | None
) -> tuple[ApiKey | None, int | None]:
    """:func:`api_key_for_auth`, and the request's rate-limit count of ``counter`` taken in the
    same cache round trip (``core.throttling.key_counter``); None without a counter."""
    cached, generation, count = auth_cache.cached_lookup_counting(public_id, counter)
    if cached is not None:
        return cached, count
    key = _api_key_from_db(public_id)
    if key is not None:
        auth_cache.store(public_id, key, generation)
    return key, count
