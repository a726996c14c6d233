"""Writes of `core`: background jobs and their progress.

A job moves PENDING → RUNNING → SUCCEEDED | FAILED | CANCELLED; every move is a conditional UPDATE
whose row count says whether this caller won, so a redelivered Celery message cannot run a job
twice. Each change is published to the job's realtime group after commit.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from core import metrics, realtime
from core.errors import ValidationError
from core.models import IdempotencyRecord, Job
from core.registries import job_handler

logger = logging.getLogger(__name__)


def job_group(job_id: UUID | str) -> str:
    """Realtime group that followers of one job subscribe to."""
    return f"job.{job_id}"


def _announce(job_id: UUID | str) -> None:
    realtime.publish_on_commit(job_group(job_id), {"job": str(job_id)})


def job_create(
    *,
    kind: str,
    org: Any = None,
    actor: Any = None,
    payload: dict[str, Any] | None = None,
    message: str = "",
    enqueue: bool = True,
) -> Job:
    """Record a job and, after commit, hand it to a worker (one INSERT: in the caller's transaction
    when there is one, no savepoint of its own)."""
    if job_handler(kind) is None:
        raise ValidationError(f"Unknown job kind {kind!r}.", code="ERR_UNKNOWN_JOB_KIND")
    job = Job(kind=kind, org=org, actor=actor, payload=payload or {}, message=message)
    # Fields only: the primary key is a fresh uuid4, ``org`` and ``actor`` are rows the caller
    # holds, and the database checks its constraints itself; each look-up cost a round trip.
    job.full_clean(exclude=["org", "actor"], validate_unique=False, validate_constraints=False)
    job.save()
    if enqueue:
        from core.tasks import run_job

        transaction.on_commit(lambda: run_job.delay(str(job.pk)))
    return job


def job_start(*, job_id: UUID | str) -> Job | None:
    """Claim a pending job for this worker; None when another worker has it or it has ended."""
    won = Job.objects.filter(pk=job_id, status=Job.Status.PENDING).update(
        status=Job.Status.RUNNING,
        started_at=timezone.now(),
        updated_at=timezone.now(),
        attempts=F("attempts") + 1,
    )
    if not won:
        return None
    _announce(job_id)
    return Job.objects.get(pk=job_id)


def job_progress(*, job_id: UUID | str, percent: int, message: str = "") -> bool:
    """Report progress of a running job; False when the job is no longer running."""
    percent = max(0, min(100, int(percent)))
    updated = Job.objects.filter(pk=job_id, status=Job.Status.RUNNING).update(
        percent=percent, message=message[:500], updated_at=timezone.now()
    )
    if updated:
        _announce(job_id)
    return bool(updated)


def jobs_progress(*, job_ids: list[UUID | str], percent: int, message: str = "") -> int:
    """:func:`job_progress` of many jobs in one UPDATE (a bulk worker's batch); returns how many
    were still running (only those change)."""
    percent = max(0, min(100, int(percent)))
    updated = Job.objects.filter(pk__in=job_ids, status=Job.Status.RUNNING).update(
        percent=percent, message=message[:500], updated_at=timezone.now()
    )
    if updated:  # a follower of a job that had ended re-reads it and sees nothing new
        realtime.publish_many_on_commit([(job_group(job_id), {"job": str(job_id)}) for job_id in job_ids])
    return updated


def jobs_succeed(*, results: dict[UUID, Any], message: str = "Done") -> int:
    """:func:`job_succeed` of many jobs, each with its own result, in one UPDATE; returns how many
    had not ended (those are the ones marked)."""
    results = {UUID(str(job_id)): result for job_id, result in results.items()}
    if not results:
        return 0
    with transaction.atomic():
        open_jobs = list(
            Job.objects.select_for_update()
            .filter(pk__in=list(results), status__in=[Job.Status.PENDING, Job.Status.RUNNING])
            .values_list("pk", "kind")
        )
        if not open_jobs:
            return 0
        now = timezone.now()
        result_field = Job._meta.get_field("result")
        updated = Job.objects.filter(pk__in=[pk for pk, _ in open_jobs]).update(
            status=Job.Status.SUCCEEDED, finished_at=now, updated_at=now, percent=100, message=message[:500],
            result=Case(
                *[When(pk=pk, then=Value(results[pk], output_field=result_field)) for pk, _ in open_jobs],
                output_field=result_field,
            ),
        )  # fmt: skip
        for kind, count in Counter(kind for _, kind in open_jobs).items():
            metrics.JOBS_FINISHED.labels(kind, Job.Status.SUCCEEDED).inc(count)
        realtime.publish_many_on_commit([(job_group(pk), {"job": str(pk)}) for pk, _ in open_jobs])
    return updated


def _finish(job_id: UUID | str, status: str, **fields: Any) -> bool:
    now = timezone.now()
    job = Job.objects.filter(pk=job_id).only("kind").first()
    updated = Job.objects.filter(pk=job_id, status__in=[Job.Status.PENDING, Job.Status.RUNNING]).update(
        status=status, finished_at=now, updated_at=now, **fields
    )
    if updated and job is not None:
        metrics.JOBS_FINISHED.labels(job.kind, status).inc()
        _announce(job_id)
    return bool(updated)


def job_succeed(*, job_id: UUID | str, result: Any = None, message: str = "Done") -> bool:
    """Mark the job succeeded with its result."""
    return _finish(job_id, Job.Status.SUCCEEDED, result=result, percent=100, message=message)


def job_fail(*, job_id: UUID | str, code: str, message: str) -> bool:
    """Mark the job failed with an error the client can show."""
    return _finish(job_id, Job.Status.FAILED, error={"code": code, "message": message}, message=message[:500])


def job_cancel(*, job_id: UUID | str) -> bool:
    """Cancel a job that has not ended; a running handler sees it at its next progress report."""
    return _finish(job_id, Job.Status.CANCELLED, message="Cancelled")


class JobReporter:
    """Handed to job handlers: progress reports, and whether the job was cancelled meanwhile."""

    def __init__(self, job: Job) -> None:
        self.job_id = job.pk

    def progress(self, percent: int, message: str = "") -> bool:
        """Report progress; returns False when the job stopped running (cancelled)."""
        return job_progress(job_id=self.job_id, percent=percent, message=message)


def job_fail_stale() -> int:
    """Fail running jobs whose worker stopped reporting (it died or was killed)."""
    cutoff = timezone.now() - timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS)
    stale = list(
        Job.objects.filter(status=Job.Status.RUNNING, updated_at__lt=cutoff).values_list("pk", flat=True)
    )
    failed = 0
    for job_id in stale:
        failed += job_fail(
            job_id=job_id, code="ERR_JOB_STALE", message="The worker stopped reporting progress."
        )
    return failed


def idempotency_records_purge() -> int:
    """Forget Idempotency-Key answers whose window has passed."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
