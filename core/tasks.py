"""Celery tasks of `core`: thin interfaces that take ids and call services."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from core import services
from core.errors import ApplicationError
from core.registries import job_handler

logger = logging.getLogger(__name__)


@shared_task(name="core.tasks.run_job", acks_late=True, ignore_result=True)
def run_job(job_id: str) -> None:
    """Run one Job with its registered handler; a redelivered message finds it taken and exits."""
    job = services.job_start(job_id=job_id)
    if job is None:
        return
    handler = job_handler(job.kind)
    if handler is None:
        services.job_fail(job_id=job_id, code="ERR_UNKNOWN_JOB_KIND", message=f"No handler for {job.kind}.")
        return
    try:
        result = handler(job, services.JobReporter(job))
    except ApplicationError as exc:
        services.job_fail(job_id=job_id, code=exc.code, message=exc.message)
    except SoftTimeLimitExceeded:
        services.job_fail(job_id=job_id, code="ERR_JOB_TIMEOUT", message="The job ran out of time.")
    except Exception:
        logger.exception("job %s (%s) crashed", job_id, job.kind)
        services.job_fail(job_id=job_id, code="ERR_INTERNAL", message="The job failed unexpectedly.")
    else:
        services.job_succeed(job_id=job_id, result=result)


@shared_task(name="core.tasks.purge_idempotency_records", ignore_result=True)
def purge_idempotency_records() -> int:
    """Beat: drop Idempotency-Key answers older than their window."""
    return services.idempotency_records_purge()


@shared_task(name="core.tasks.fail_stale_jobs", ignore_result=True)
def fail_stale_jobs() -> int:
    """Beat: fail jobs whose worker died mid-run."""
    return services.job_fail_stale()


@shared_task(name="core.tasks.run_cron", ignore_result=True)
def run_cron(name: str) -> dict:
    """Beat: run one registered cron job (see core.crons) in a worker."""
    from core.crons import run_cron as run

    return run(name)
