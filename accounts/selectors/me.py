"""Reads about the caller: their memberships, their export jobs and the data a GDPR export holds."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet

from accounts.models import ApiKey, AuditLog, Membership, SecurityEvent, User
from core.errors import NotFoundError
from core.models import Job

USER_EXPORT_JOB = "accounts.user_export"


def my_memberships(*, user: User) -> QuerySet[Membership]:
    """The caller's memberships in live orgs (not being deleted), oldest first, with the org."""
    return (
        Membership.objects.select_related("org")
        .filter(user=user, org__deletion_requested_at__isnull=True)
        .order_by("created_at", "id")
    )


def my_membership_get(*, user: User, org_id: UUID | str) -> Membership:
    """The caller's membership in one org; 404 when they are not a member (or it is going away)."""
    membership = my_memberships(user=user).filter(org_id=org_id).first()
    if membership is None:
        raise NotFoundError("Organisation not found.")
    return membership


def user_export_job_get(*, user: User, job_id: UUID | str) -> Job:
    """One of the caller's own export jobs; anyone else's (or another kind of job) is a 404."""
    job = Job.objects.filter(pk=job_id, kind=USER_EXPORT_JOB, org__isnull=True, actor=user).first()
    if job is None:
        raise NotFoundError("Export not found.")
    return job


def _profile(user: User) -> dict[str, Any]:
    return {
        "id": str(user.pk),
        "email": user.email,
        "display_name": user.display_name,
        "avatar_url": user.avatar_url,
        "language": user.language,
        "timezone": user.timezone,
        "is_active": user.is_active,
        "is_staff": user.is_staff,
        "date_joined": user.date_joined.isoformat(),
        "last_login": user.last_login.isoformat() if user.last_login else None,
        "active_org": str(user.active_org_id) if user.active_org_id else None,
    }


def _dt(value) -> str | None:
    return value.isoformat() if value is not None else None


def user_export_data(*, user: User) -> dict[str, Any]:
    """Everything the platform holds about a person, as JSON-ready sections (one file each).

    API keys are listed without any secret material; activity is the audit rows where the person
    is the actor; security events are those recorded against them or
    naming their address (failed logins).
    """
    memberships = [
        {
            "org": {"id": str(m.org_id), "name": m.org.name},
            "role": m.role,
            "joined_at": _dt(m.created_at),
        }
        for m in Membership.objects.select_related("org").filter(user=user).order_by("created_at")
    ]
    api_keys = [
        {
            "id": str(k.pk),
            "org": str(k.org_id),
            "kind": k.kind,
            "name": k.name,
            "public_id": k.public_id,
            "role": k.role,
            "scopes": k.scopes,
            "is_active": k.is_active,
            "created_at": _dt(k.created_at),
            "expires_at": _dt(k.expires_at),
            "revoked_at": _dt(k.revoked_at),
            "deleted_at": _dt(k.deleted_at),
            "last_used_at": _dt(k.last_used_at),
            "last_used_ip": k.last_used_ip,
        }
        for k in ApiKey.objects.filter(user=user).order_by("created_at")
    ]
    activity = [
        {
            "id": str(a.pk),
            "at": _dt(a.created_at),
            "org": str(a.org_id) if a.org_id else None,
            "org_name": a.org_name,
            "action": a.action,
            "entity_type": a.entity_type,
            "entity_id": a.entity_id,
            "changes": a.changes,
            "ip": a.ip,
            "user_agent": a.user_agent,
        }
        for a in AuditLog.objects.filter(actor=user).order_by("created_at")
    ]
    security_events = [
        {
            "id": str(e.pk),
            "at": _dt(e.created_at),
            "kind": e.kind,
            "org": str(e.org_id) if e.org_id else None,
            "identifier": e.identifier,
            "ip": e.ip,
            "user_agent": e.user_agent,
            "path": e.path,
            "details": e.details,
        }
        for e in SecurityEvent.objects.filter(Q(user=user) | Q(identifier__iexact=user.email)).order_by(
            "created_at"
        )
    ]
    return {
        "profile.json": _profile(user),
        "memberships.json": memberships,
        "api_keys.json": api_keys,
        "activity.json": activity,
        "security_events.json": security_events,
    }
