"""Writes of documents: create (upload, text, URL), delete, retry.

A new document is ``pending`` with an ingestion Job queued after commit
(:mod:`knowledge.services.ingest` does the work). Uploads are sniffed in the request (type by
content, zip-bomb check) so a bad file answers 400 at once, and stored under a generated name in
Django's default storage. The same content sent twice to one KB is not ingested twice: the
existing document is returned (``duplicate``), found by the SHA-256 of the content.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from accounts.models import User
from accounts.services.audit import audit_record
from core.errors import ConflictError, ValidationError
from core.models import Job
from core.outbound import check_url
from core.quotas import check_limit
from core.services import job_create
from knowledge import parsing
from knowledge.models import ChunkEmbedding, Document, IndexVersion, KnowledgeBase

logger = logging.getLogger(__name__)

JOB_INGEST = "knowledge.ingest"
MAX_TEXT_CHARS = 5_000_000
MAX_METADATA_KEYS = 50
_EXTENSIONS = {
    "pdf": ".pdf", "docx": ".docx", "html": ".html", "markdown": ".md", "text": ".txt", "csv": ".csv",
    "json": ".json",
}  # fmt: skip


@dataclass
class Created:
    """A document create's outcome: the document, and whether it already existed."""

    document: Document
    duplicate: bool = False


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _clean_metadata(metadata: dict | None) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS:
        raise ValidationError(
            f"metadata: Must be an object of at most {MAX_METADATA_KEYS} keys.",
            details={"fields": {"metadata": ["Not a small object."]}},
        )
    return metadata


def _existing(kb: KnowledgeBase, content_hash: str) -> Document | None:
    """The live document of the KB with this content. Only standard KBs dedupe: agent memory keeps
    one document per memory path even when two paths hold the same words."""
    if kb.kind != KnowledgeBase.Kind.STANDARD:
        return None
    return (
        Document.objects.filter(kb=kb, content_hash=content_hash)
        .exclude(status=Document.Status.FAILED)
        .order_by("created_at")
        .first()
    )


def _ingestion_job(document: Document, actor: User | None) -> Job:
    return job_create(
        kind=JOB_INGEST,
        org=document.org,
        actor=actor if actor is not None and actor.pk else None,
        payload={"document_id": str(document.pk), "kb_id": str(document.kb_id)},
        message="Waiting for a worker",
    )


def _queue(document: Document, actor: User | None) -> None:
    """A new ingestion job for a stored document (retry, requeue)."""
    job = _ingestion_job(document, actor)
    Document.objects.filter(pk=document.pk).update(job=job)
    document.job = job


def _create(
    *,
    kb: KnowledgeBase,
    actor: User | None,
    title: str,
    content_hash: str,
    size: int,
    audit_extra: dict | None = None,
    **fields: Any,
) -> Created:
    existing = _existing(kb, content_hash)
    if existing is not None:
        return Created(existing, duplicate=True)
    check_limit(org=kb.org, resource="kb_storage_bytes", adding=size)
    title = (title or "").strip()[:300] or "Untitled"
    document = Document(
        org=kb.org,
        kb=kb,
        title=title,
        content_hash=content_hash,
        size_bytes=size,
        created_by=actor if actor is not None and actor.pk else None,
        **fields,
    )
    # The primary key is a fresh uuid4 and the database checks the foreign keys: no look-ups.
    document.full_clean(exclude=["org", "kb", "job", "created_by", "file"], validate_unique=False)
    document.job = _ingestion_job(document, actor)  # created first: the document row is written once
    document.save(force_insert=True)
    audit_record(
        org=kb.org,
        actor=actor,
        action="document.created",
        entity=document,
        after={"kb": str(kb.pk), "title": title, "source": document.source, **(audit_extra or {})},
    )
    return Created(document)


@transaction.atomic
def document_create_from_upload(
    *, kb: KnowledgeBase, actor: User | None, data: bytes, filename: str, title: str = "",
    metadata: dict | None = None,
) -> Created:  # fmt: skip
    """A document from uploaded bytes (type checked by content; stored under a generated name)."""
    file_type = parsing.sniff(data, filename)
    metadata = _clean_metadata(metadata)
    content_hash = _hash(data)
    existing = _existing(kb, content_hash)
    if existing is not None:
        return Created(existing, duplicate=True)
    name = f"knowledge/{kb.org_id}/{uuid.uuid4().hex}{_EXTENSIONS.get(file_type, '')}"
    stored = default_storage.save(name, ContentFile(data))
    try:
        return _create(
            kb=kb, actor=actor, title=title or filename.rsplit("/", 1)[-1], content_hash=content_hash,
            size=len(data), source=Document.Source.UPLOAD, file=stored, filename=filename[:300],
            file_type=file_type, metadata=metadata, audit_extra={"file_type": file_type, "size": len(data)},
        )  # fmt: skip
    except Exception:
        default_storage.delete(stored)
        raise


@transaction.atomic
def document_create_from_text(
    *,
    kb: KnowledgeBase,
    actor: User | None,
    title: str,
    text: str,
    metadata: dict | None = None,
    source: str = "text",
    file_type: str = "text",
) -> Document:
    """A document from a text (queues ingestion); the same text twice returns the first document."""
    return document_create_text(
        kb=kb, actor=actor, title=title, text=text, metadata=metadata, source=source, file_type=file_type
    ).document


def document_create_text(
    *,
    kb: KnowledgeBase,
    actor: User | None,
    title: str,
    text: str,
    metadata: dict | None = None,
    source: str = "text",
    file_type: str = "text",
) -> Created:
    """Like :func:`document_create_from_text`, also telling whether it was a duplicate."""
    if not isinstance(text, str) or not text.strip():
        raise ValidationError(
            "text: Must not be empty.", details={"fields": {"text": ["Must not be empty."]}}
        )
    if len(text) > MAX_TEXT_CHARS:
        raise ValidationError(
            f"text: At most {MAX_TEXT_CHARS} characters.", details={"fields": {"text": ["Too long."]}}
        )
    if file_type not in ("text", "markdown", "html", "csv", "json"):
        raise ValidationError("file_type: Must be text, markdown, html, csv or json.")
    data = text.encode("utf-8")
    with transaction.atomic():
        return _create(
            kb=kb, actor=actor, title=title, content_hash=_hash(data), size=len(data), source=source,
            text=text, file_type=file_type, metadata=_clean_metadata(metadata),
        )  # fmt: skip


@transaction.atomic
def document_create_from_url(
    *, kb: KnowledgeBase, actor: User | None, url: str, title: str = "", metadata: dict | None = None
) -> Created:
    """A document fetched from ``url`` by the worker, through the outbound guard (checked here too,
    so a private address answers 400 at once)."""
    check_url(url)
    content_hash = _hash(f"url:{url}".encode())
    return _create(
        kb=kb, actor=actor, title=title or url, content_hash=content_hash, size=0, source=Document.Source.URL,
        source_url=url, metadata=_clean_metadata(metadata), audit_extra={"url": url},
    )  # fmt: skip


def _bump_indexes(kb_id: Any) -> None:
    from django.db.models import F

    IndexVersion.objects.filter(kb_id=kb_id).exclude(status=IndexVersion.Status.RETIRED).update(
        revision=F("revision") + 1
    )


@transaction.atomic
def document_delete(*, document: Document, actor: User | None) -> None:
    """Delete a document with its chunks and vectors; its stored file goes after commit."""
    name = document.file.name if document.file else ""
    document_id, kb_id, org = document.pk, document.kb_id, document.org
    had_vectors = ChunkEmbedding.objects.filter(chunk__document_id=document_id).exists()
    document.delete()
    if had_vectors:
        _bump_indexes(kb_id)
    audit_record(
        org=org, actor=actor, action="document.deleted", entity_type="document", entity_id=document_id,
        before={"kb": str(kb_id)},
    )  # fmt: skip
    if name:
        transaction.on_commit(lambda: delete_files([name]))


def delete_files(names: list[str]) -> None:
    """Remove stored files, logging (not raising) what cannot be removed."""
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:
            logger.warning("could not delete stored file %s", name, exc_info=True)


@transaction.atomic
def document_retry(*, document: Document, actor: User | None) -> Document:
    """Queue a failed document again (attempts start over); 409 unless it failed."""
    updated = Document.objects.filter(pk=document.pk, status=Document.Status.FAILED).update(
        status=Document.Status.PENDING, attempts=0, error_code="", error_message="", lease_expires_at=None
    )
    if not updated:
        current = Document.objects.filter(pk=document.pk).values_list("status", flat=True).first()
        raise ConflictError(
            "Only a failed document can be retried.",
            code="ERR_DOCUMENT_NOT_FAILED",
            details={"status": current},
        )
    document.refresh_from_db()
    _queue(document, actor)
    audit_record(org=document.org, actor=actor, action="document.retried", entity=document)
    return document


@transaction.atomic
def document_requeue(*, document: Document, actor: User | None) -> Document:
    """Ingest a document again whatever its state (reindex with re-chunking)."""
    Document.objects.filter(pk=document.pk).update(
        status=Document.Status.PENDING, attempts=0, error_code="", error_message="", lease_expires_at=None
    )
    document.refresh_from_db()
    _queue(document, actor)
    return document
