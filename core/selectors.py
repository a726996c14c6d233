"""Reads of `core`: jobs as their callers may see them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.db.models import Q

from core.errors import NotFoundError
from core.models import Job


def job_get(*, job_id: UUID | str, org: Any, user: Any) -> Job:
    """A job of the caller's org, or a platform job the caller started; else 404."""
    visible = Q(pk__in=[])
    if org is not None:
        visible |= Q(org=org)
    if user is not None and getattr(user, "is_authenticated", False):
        visible |= Q(org__isnull=True, actor=user)
    job = Job.objects.filter(visible, pk=job_id).first()
    if job is None:
        raise NotFoundError("Job not found.")
    return job


def job_snapshot(*, job_id: UUID | str) -> Job | None:
    """The current state of a job for a stream that already checked access."""
    return Job.objects.filter(pk=job_id).first()
