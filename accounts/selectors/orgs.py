"""Reads of organisations, memberships, invites and groups.

Every org-owned read takes ``org=`` so that a caller can only ever see its own tenant's rows; the
one exception is ``invite_by_token``, whose secret token is itself the proof of access.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db.models import Count, QuerySet
from django.utils import timezone

from accounts.models import Group, GroupMembership, Invite, Membership, Organization, User
from core.errors import NotFoundError


class InviteStatus:
    """The states an invite can be in, as the API names them."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    EXPIRED = "expired"
    REVOKED = "revoked"

    ALL = (PENDING, ACCEPTED, EXPIRED, REVOKED)


def invite_token_hash(token: str) -> str:
    """The stored form of an invite token: only its SHA-256 ever reaches the database."""
    return hashlib.sha256(token.encode()).hexdigest()


def invite_status(invite: Invite, *, now: datetime | None = None) -> str:
    """What an invite is now; a used invite stays ``accepted`` even after its expiry passes."""
    now = now or timezone.now()
    if invite.accepted_at is not None:
        return InviteStatus.ACCEPTED
    if invite.revoked_at is not None:
        return InviteStatus.REVOKED
    if invite.expires_at <= now:
        return InviteStatus.EXPIRED
    return InviteStatus.PENDING


def org_list_for_user(*, user: User) -> QuerySet[Membership]:
    """The caller's memberships (with their orgs) in orgs that are not being deleted."""
    return (
        Membership.objects.select_related("org")
        .filter(user=user, org__deletion_requested_at__isnull=True)
        .order_by("org__name", "org_id")
    )


def member_list(*, org: Organization) -> QuerySet[Membership]:
    """An org's memberships with their users, oldest first."""
    return Membership.objects.select_related("user").filter(org=org).order_by("created_at", "id")


def member_get(*, org: Organization, user_id: UUID | str) -> Membership:
    """One member of ``org`` by user id; 404 for anyone else (including other orgs' users)."""
    membership = member_list(org=org).filter(user_id=user_id).first()
    if membership is None:
        raise NotFoundError("Member not found.")
    return membership


def invite_list(*, org: Organization, status: str | None = None) -> QuerySet[Invite]:
    """An org's invites, newest first, optionally only those in one status."""
    invites = Invite.objects.select_related("org", "invited_by").filter(org=org).order_by("-created_at")
    now = timezone.now()
    if status == InviteStatus.PENDING:
        invites = invites.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__gt=now)
    elif status == InviteStatus.ACCEPTED:
        invites = invites.filter(accepted_at__isnull=False)
    elif status == InviteStatus.REVOKED:
        invites = invites.filter(accepted_at__isnull=True, revoked_at__isnull=False)
    elif status == InviteStatus.EXPIRED:
        invites = invites.filter(accepted_at__isnull=True, revoked_at__isnull=True, expires_at__lte=now)
    return invites


def invite_pending_for_email(*, org: Organization, email: str) -> Invite | None:
    """A usable invite of ``org`` for this address (case-insensitive), if there is one."""
    return invite_list(org=org, status=InviteStatus.PENDING).filter(email__iexact=email.strip()).first()


def invite_by_token(*, token: str) -> Invite | None:
    """The invite a raw token names (any status), with its org; None for an unknown token."""
    if not token:
        return None
    return (
        Invite.objects.select_related("org", "invited_by").filter(token_hash=invite_token_hash(token)).first()
    )


def group_list(*, org: Organization) -> QuerySet[Group]:
    """An org's groups by name, each with ``member_count``."""
    return Group.objects.filter(org=org).annotate(member_count=Count("group_memberships")).order_by("name")


def group_get(*, org: Organization, group_id: UUID | str) -> Group:
    """One group of ``org``; 404 for another org's group."""
    group = group_list(org=org).filter(pk=group_id).first()
    if group is None:
        raise NotFoundError("Group not found.")
    return group


def group_member_list(*, org: Organization, group: Group) -> QuerySet[GroupMembership]:
    """The users in one of ``org``'s groups, in the order they were added."""
    return (
        GroupMembership.objects.select_related("user")
        .filter(group=group, group__org=org)
        .order_by("created_at", "id")
    )


def membership_role(*, org: Organization | None, user: Any) -> str | None:
    """``user``'s current role in ``org``, or None when they are not a member."""
    if org is None or user is None or not getattr(user, "is_authenticated", False):
        return None
    return Membership.objects.filter(org=org, user=user).values_list("role", flat=True).first()
