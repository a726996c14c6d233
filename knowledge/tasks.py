"""Celery tasks and Job handlers of `knowledge`: thin interfaces that take ids and call services.

Jobs (``core.models.Job``, followed by clients through ``/api/v1/jobs/{id}[/stream]``):

- ``knowledge.ingest``: a document's ingestion (``knowledge.services.ingest.ingest_document``), with
  the other pending documents of its KB when there are any;
- ``knowledge.index_build``: build a new vector index version and switch to it (reindex, model change);
- ``knowledge.backfill``: embed everything of an org that its serving indexes lack (admin).

``requeue_stale_documents`` (beat, every minute) hands documents whose worker died back to a worker.
"""

from __future__ import annotations

import logging

from celery import shared_task

from core.models import Job
from core.registries import register_job
from core.services import JobReporter
from knowledge.services import ingest

logger = logging.getLogger(__name__)


@register_job("knowledge.ingest")
def ingest_job(job: Job, reporter: JobReporter) -> dict:
    """Run the document's ingestion (with other pending documents of its KB: a bulk upload); it
    reports progress and finishes the job itself. A document another worker holds is waited for."""
    document_id = job.payload.get("document_id")
    status = ingest.ingest_or_wait(document_id)
    return {"document_id": document_id, "status": status or "deleted"}


@register_job("knowledge.index_build")
def index_build_job(job: Job, reporter: JobReporter) -> dict:
    """Build (then serve) an index version; a keyword-only KB's reindex has nothing to embed."""
    index_id = job.payload.get("index_id")
    if not index_id:
        return {"status": "ready", "note": "keyword-only knowledge base: the full-text index was refreshed"}
    return ingest.build_index(index_id, report=reporter.progress)


@register_job("knowledge.backfill")
def backfill_job(job: Job, reporter: JobReporter) -> dict:
    """Embed every chunk of the org that its serving index lacks."""
    return ingest.backfill(org=job.org, report=reporter.progress)


@shared_task(
    name="knowledge.tasks.ingest_document",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=True,
    retry_jitter=True,
    max_retries=3,
)
def ingest_document(document_id: str) -> str | None:
    """Ingest one document (the path of re-queued documents; new ones go through their Job)."""
    return ingest.ingest_document(document_id)


@shared_task(name="knowledge.tasks.requeue_stale_documents", ignore_result=True)
def requeue_stale_documents() -> int:
    """Beat: documents whose lease expired (dead worker) or that nobody took go to a worker again."""
    ids = ingest.requeue_expired(enqueue=lambda document_id: ingest_document.delay(document_id))
    if ids:
        logger.info("re-queued %d stale documents", len(ids))
    return len(ids)
