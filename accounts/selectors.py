"""Reads of `accounts`."""

from __future__ import annotations

from accounts.models import Membership, User


def membership_for_request(*, user: User, org_id: str | None = None) -> Membership | None:
    """The membership a request acts through: the named org, else the active org, else the first."""
    memberships = Membership.objects.select_related("org").filter(user=user)
    if org_id:
        return memberships.filter(org_id=org_id).first()
    if user.active_org_id:
        found = memberships.filter(org_id=user.active_org_id).first()
        if found is not None:
            return found
    return memberships.first()
