"""Writes of agent memory: documents addressed by path, per agent and optionally per user.

A memory document's text is a `knowledge` document of the agent's hidden ``agent_memory`` KB, so
it is chunked, embedded and searched like any other. Replacing the content creates the new
knowledge document and deletes the old one (its chunks and vectors go with it) in one
transaction; the new one is then ingested inline, outside the transaction, because ingestion may
call an embedding provider. The same content twice is a no-op (compared by hash).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.services.audit import audit_record
from agents.models import Agent
from core.errors import ValidationError
from knowledge.models import Document, KnowledgeBase
from knowledge.services.bases import kb_create
from knowledge.services.documents import document_create_from_text, document_delete
from knowledge.services.ingest import ingest_document

from ..models import MemoryDocument

MAX_PATH = 255
MAX_CONTENT_CHARS = 200_000
_PATH = re.compile(r"^[A-Za-z0-9._/-]+$")


def validate_path(path: str) -> str:
    """A memory path: ``[A-Za-z0-9._/-]``, at most 255 characters, no ``..``, no empty segment."""
    path = (path or "").strip()
    problem = None
    if not path:
        problem = "The path must not be empty."
    elif len(path) > MAX_PATH:
        problem = f"The path must be at most {MAX_PATH} characters."
    elif not _PATH.match(path):
        problem = "The path may only contain letters, digits, '.', '_', '-' and '/'."
    elif ".." in path:
        problem = "The path must not contain '..'."
    elif path.startswith("/") or path.endswith("/") or "//" in path:
        problem = "The path must not start or end with '/' or contain an empty segment."
    elif any(segment == "." for segment in path.split("/")):
        problem = "The path must not contain a '.' segment."
    if problem:
        raise ValidationError(problem, code="ERR_INVALID_PATH", details={"path": [problem]})
    return path


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def agent_kb(*, agent: Agent, kind: str, actor: User | None = None) -> KnowledgeBase:
    """The agent's hidden KB of ``kind`` (agent_memory or episodic), created on first use.

    The agent row is locked so that two first writes cannot create two KBs.
    """
    with transaction.atomic():
        Agent.objects.select_for_update().filter(pk=agent.pk).first()
        kb = (
            KnowledgeBase.objects.filter(org_id=agent.org_id, agent=agent, kind=kind)
            .order_by("created_at")
            .first()
        )
        if kb is None:
            label = "memory" if kind == KnowledgeBase.Kind.AGENT_MEMORY else "episodes"
            kb = kb_create(
                org=agent.org, actor=actor, name=f"{agent.name} ({label})"[:200], kind=kind, agent=agent
            )
        return kb


def delete_document_locked(document: Document, *, actor: User | None) -> None:
    """Delete a knowledge document after locking its row (inside the caller's transaction).

    Ingestion inserts chunks while holding that lock; without waiting for it, a replacement could
    collect the chunks, miss the ones being inserted and fail on the foreign key.
    """
    locked = Document.objects.select_for_update().filter(pk=document.pk).first()
    if locked is not None:
        document_delete(document=locked, actor=actor)


def _unchanged(row: MemoryDocument | None, digest: str) -> bool:
    """Same content, and its knowledge document is there and did not fail (else write it again)."""
    return (
        row is not None
        and row.content_hash == digest
        and row.document is not None
        and row.document.status != Document.Status.FAILED
    )


def _snapshot(row: MemoryDocument) -> dict[str, Any]:
    return {
        "path": row.path,
        "user_id": row.user_id,
        "content_hash": row.content_hash,
        "chars": len(row.content),
        "document_id": row.document_id,
    }


def memory_document_put(
    *, agent: Agent, user: User | None, path: str, content: str, actor: User | None
) -> tuple[MemoryDocument, bool]:
    """Create or replace the memory document at ``path`` (``user`` set: that user's own memory).

    Returns (row, created). Unchanged content writes nothing and ingests nothing.
    """
    path = validate_path(path)
    if len(content) > MAX_CONTENT_CHARS:
        raise ValidationError(
            f"The content must be at most {MAX_CONTENT_CHARS} characters.", details={"content": ["Too long."]}
        )
    digest = content_hash(content)
    scope = {"agent": agent, "user": user, "path": path}
    current = MemoryDocument.objects.filter(**scope).select_related("document").first()
    if _unchanged(current, digest):
        return current, False

    kb = agent_kb(agent=agent, kind=KnowledgeBase.Kind.AGENT_MEMORY, actor=actor)
    arguments = dict(agent=agent, user=user, path=path, content=content, digest=digest, kb=kb, actor=actor)
    try:
        row, created, document_id = _write(**arguments)
    except IntegrityError:  # a concurrent PUT created the path first: replace what it wrote
        row, created, document_id = _write(**arguments)
    if document_id is not None:
        ingest_document(document_id)
    return row, created


@transaction.atomic
def _write(
    *,
    agent: Agent,
    user: User | None,
    path: str,
    content: str,
    digest: str,
    kb: KnowledgeBase,
    actor: User | None,
) -> tuple[MemoryDocument, bool, Any]:
    row = MemoryDocument.objects.select_for_update().filter(agent=agent, user=user, path=path).first()
    created = row is None
    if row is None:
        row = MemoryDocument(org_id=agent.org_id, agent=agent, user=user, path=path, created_by=actor)
    elif _unchanged(row, digest):
        return row, False, None  # a concurrent PUT wrote the same content
    before = None if created else _snapshot(row)
    document = document_create_from_text(
        kb=kb,
        actor=actor,
        title=path,
        text=content,
        metadata={"memory_path": path, "agent_id": str(agent.pk), "user_id": str(user.pk) if user else None},
        source="text",
    )
    old_document = row.document
    row.content, row.content_hash, row.document = content, digest, document
    row.full_clean(validate_unique=False, validate_constraints=False)
    row.save()
    if old_document is not None:
        delete_document_locked(old_document, actor=actor)
    audit_record(
        org=agent.org,
        actor=actor,
        action="memory.document.created" if created else "memory.document.replaced",
        entity=row,
        before=before,
        after=_snapshot(row),
    )
    return row, created, document.pk


@transaction.atomic
def memory_document_delete(*, memory_document: MemoryDocument, actor: User | None) -> None:
    """Delete a memory document and its knowledge document (chunks and vectors with it)."""
    before = _snapshot(memory_document)
    document = memory_document.document
    audit_record(
        org=memory_document.org,
        actor=actor,
        action="memory.document.deleted",
        entity=memory_document,
        before=before,
    )
    memory_document.delete()
    if document is not None:
        delete_document_locked(document, actor=actor)
