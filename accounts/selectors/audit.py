"""Reads of the audit trail and of security events, always scoped to one org.

Who sees what lives here, once: ADMINs and OWNERs read every audit row of their org, anyone below
reads only the rows they are the actor of. Every filter maps onto one of the AuditLog indexes
(org + created_at, org + action, org + entity, org + actor), so a list never scans other tenants.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.db.models import Count, Max, Q, QuerySet
from django.db.models.functions import TruncDate

from accounts.models import AuditLog, Membership, Organization, Role, SecurityEvent, User

# The dimensions GET /activity/aggregate groups by.
AGGREGATE_DIMENSIONS = ("action", "actor", "entity_type", "day")
# An aggregate answers at most this many groups (a day per row covers ~27 years).
AGGREGATE_MAX_GROUPS = 10_000


@dataclass(frozen=True)
class ActivityFilters:
    """The filters of the activity endpoints, already validated.

    ``action`` ending in ``.*`` is a prefix (``api_key.*`` → every ``api_key.`` action);
    ``created_from`` is inclusive and ``created_to`` exclusive, so ranges tile without overlap.
    """

    actor_id: UUID | None = None
    action: str = ""
    entity_type: str = ""
    entity_id: str = ""
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None


def audit_log_sees_all(*, role: str | None) -> bool:
    """ADMINs and OWNERs read the whole audit log of their org; others only their own rows."""
    return Role.rank(role) >= Role.rank(Role.ADMIN)


def _created_between(
    queryset: QuerySet, created_from: dt.datetime | None, created_to: dt.datetime | None
) -> QuerySet:
    if created_from is not None:
        queryset = queryset.filter(created_at__gte=created_from)
    if created_to is not None:
        queryset = queryset.filter(created_at__lt=created_to)
    return queryset


def audit_log_list(
    *, org: Organization, user: User, role: str | None, filters: ActivityFilters | None = None
) -> QuerySet[AuditLog]:
    """The org's audit rows that ``user`` (acting with ``role``) may read, newest first."""
    filters = filters or ActivityFilters()
    queryset = AuditLog.objects.filter(org=org)
    if not audit_log_sees_all(role=role):
        queryset = queryset.filter(actor=user)
    if filters.actor_id is not None:
        queryset = queryset.filter(actor_id=filters.actor_id)
    if filters.action.endswith(".*"):
        queryset = queryset.filter(action__startswith=filters.action[:-1])
    elif filters.action and filters.action != "*":
        queryset = queryset.filter(action=filters.action)
    if filters.entity_type:
        queryset = queryset.filter(entity_type=filters.entity_type)
        if filters.entity_id:
            queryset = queryset.filter(entity_id=filters.entity_id)
    queryset = _created_between(queryset, filters.created_from, filters.created_to)
    # id breaks ties between rows of the same instant, so pages and CSV batches never skip a row.
    return queryset.order_by("-created_at", "-id")


def audit_log_aggregate(
    *,
    org: Organization,
    user: User,
    role: str | None,
    group_by: str,
    filters: ActivityFilters | None = None,
) -> list[dict[str, Any]]:
    """Counts of the rows ``audit_log_list`` would return, grouped by one dimension.

    Each group is ``{key, label, count}``: largest count first (ties by key), except ``day``
    (UTC calendar days, ``YYYY-MM-DD``) which is chronological. ``label`` is the actor's email
    for ``actor`` and the key itself otherwise.
    """
    if group_by not in AGGREGATE_DIMENSIONS:
        raise ValueError(f"unknown dimension {group_by!r}")
    rows = audit_log_list(org=org, user=user, role=role, filters=filters).order_by()
    if group_by == "day":
        grouped = (
            rows.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
            .values("day")
            .annotate(count=Count("id"))
            .order_by("day")
        )
        return [
            {"key": row["day"].isoformat(), "label": row["day"].isoformat(), "count": row["count"]}
            for row in grouped[:AGGREGATE_MAX_GROUPS]
        ]
    if group_by == "actor":
        grouped = (
            rows.values("actor_id")
            .annotate(count=Count("id"), label=Max("actor_email"))
            .order_by("-count", "actor_id")
        )
        return [
            {
                "key": str(row["actor_id"]) if row["actor_id"] is not None else None,
                "label": row["label"] or None,
                "count": row["count"],
            }
            for row in grouped[:AGGREGATE_MAX_GROUPS]
        ]
    grouped = rows.values(group_by).annotate(count=Count("id")).order_by("-count", group_by)
    return [
        {"key": row[group_by], "label": row[group_by], "count": row["count"]}
        for row in grouped[:AGGREGATE_MAX_GROUPS]
    ]


def audit_log_after(queryset: QuerySet[AuditLog], *, created_at: dt.datetime, pk: Any) -> QuerySet[AuditLog]:
    """The rows of a newest-first ``audit_log_list`` that come after the row (created_at, pk).

    Keyset pagination for exports: each batch is one indexed query, whatever the offset.
    """
    return queryset.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=pk))


def security_event_list(
    *,
    org: Organization,
    kind: str = "",
    created_from: dt.datetime | None = None,
    created_to: dt.datetime | None = None,
) -> QuerySet[SecurityEvent]:
    """The org's security events, newest first, with their user (one query per page)."""
    queryset = SecurityEvent.objects.filter(org=org).select_related("user")
    if kind:
        queryset = queryset.filter(kind=kind)
    queryset = _created_between(queryset, created_from, created_to)
    return queryset.order_by("-created_at", "-id")


def failed_login_subject(*, identifier: str) -> tuple[User | None, Organization | None]:
    """The user a failed login named (if the account exists) and, when that user belongs to
    exactly one org, that org, so its OWNERs see attacks on their people."""
    if not identifier:
        return None, None
    user = User.objects.filter(email__iexact=identifier.strip()).first()
    if user is None:
        return None, None
    memberships = list(Membership.objects.filter(user=user).select_related("org")[:2])
    org = memberships[0].org if len(memberships) == 1 else None
    return user, org
