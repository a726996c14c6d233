"""Reads of `knowledge`: every query is scoped to an org here.

Only ``standard`` knowledge bases are listed and reachable through ``/api/v1/knowledge``; agent
memory and episodic KBs (``knowledge.memory``) stay hidden behind their own endpoints.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from core.errors import NotFoundError
from knowledge.models import Chunk, ChunkEmbedding, Document, IndexVersion, KnowledgeBase


def kb_list(*, org: Any, search: str | None = None) -> QuerySet[KnowledgeBase]:
    """The org's standard knowledge bases, newest first, with their document counts."""
    rows = (
        KnowledgeBase.objects.filter(org=org, kind=KnowledgeBase.Kind.STANDARD)
        .select_related("active_index")
        .annotate(document_count=Count("documents", distinct=True))
        .order_by("-created_at")
    )
    if search:
        rows = rows.filter(name__icontains=search)
    return rows


def kb_get(*, org: Any, kb_id: UUID | str) -> KnowledgeBase:
    """One standard KB of the org; 404 for any other (another org's, a hidden one, none)."""
    kb = kb_list(org=org).filter(pk=kb_id).first()
    if kb is None:
        raise NotFoundError("Knowledge base not found.", code="ERR_KB_NOT_FOUND")
    return kb


def document_list(*, org: Any, kb: KnowledgeBase, status: str | None = None) -> QuerySet[Document]:
    """Documents of a KB, newest first."""
    rows = Document.objects.filter(org=org, kb=kb).select_related("job").order_by("-created_at")
    if status:
        rows = rows.filter(status=status)
    return rows


def document_get(*, org: Any, kb: KnowledgeBase, document_id: UUID | str) -> Document:
    """One document of the KB; 404 otherwise."""
    document = document_list(org=org, kb=kb).filter(pk=document_id).first()
    if document is None:
        raise NotFoundError("Document not found.", code="ERR_DOCUMENT_NOT_FOUND")
    return document


def chunk_list(*, org: Any, document: Document) -> QuerySet[Chunk]:
    """A document's chunks in reading order."""
    return Chunk.objects.filter(org=org, document=document).order_by("seq")


def kb_status(kb: KnowledgeBase) -> dict[str, Any]:
    """What a KB can do now: search modes, and its index versions being built."""
    serving = kb.active_index
    building = list(
        IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.BUILDING).values(
            "id", "backend", "model"
        )
    )
    if kb.embedding_backend == KnowledgeBase.Backend.NONE:
        state, note = "keyword_only", "No embedding backend: keyword search only."
    elif serving is None:
        state, note = "building", "The vector index is being built: keyword search only until it is ready."
    else:
        state, note = "ready", "Hybrid, vector and keyword search."
    return {
        "state": state,
        "note": note,
        "search_modes": ["hybrid", "vector", "keyword"] if serving is not None else ["hybrid", "keyword"],
        "index_version": str(serving.pk) if serving is not None else None,
        "building": [{**row, "id": str(row["id"])} for row in building],
    }


def rag_stats(*, org: Any) -> dict[str, Any]:
    """ADMIN overview: documents per state, stuck documents, index versions, missing vectors."""
    now = timezone.now()
    documents = Document.objects.filter(org=org)
    by_state = {state: 0 for state in Document.Status.values}
    for row in documents.values("status").annotate(n=Count("id")):
        by_state[row["status"]] = row["n"]
    stuck = documents.filter(
        Q(status=Document.Status.PROCESSING, lease_expires_at__lt=now)
        | Q(status=Document.Status.PENDING, created_at__lt=now - timedelta(minutes=10))
    ).select_related("kb")[:50]
    versions = (
        IndexVersion.objects.filter(org=org).exclude(status=IndexVersion.Status.RETIRED).select_related("kb")
    )
    missing = 0
    version_rows = []
    for version in versions.order_by("-created_at")[:100]:
        total = Chunk.objects.filter(kb_id=version.kb_id).count()
        have = ChunkEmbedding.objects.filter(index=version).count()
        if version.status == IndexVersion.Status.READY:
            missing += max(0, total - have)
        version_rows.append(
            {
                "id": str(version.pk),
                "kb_id": str(version.kb_id),
                "kb_name": version.kb.name,
                "backend": version.backend,
                "model": version.model,
                "dimension": version.dimension,
                "status": version.status,
                "vectors": have,
                "chunks": total,
                "created_at": version.created_at,
                "activated_at": version.activated_at,
            }
        )
    return {
        "knowledge_bases": KnowledgeBase.objects.filter(org=org).count(),
        "documents": by_state,
        "chunks": Chunk.objects.filter(org=org).count(),
        "chunks_missing_vectors": missing,
        "stuck_documents": [
            {
                "id": str(d.pk),
                "kb_id": str(d.kb_id),
                "title": d.title,
                "status": d.status,
                "attempts": d.attempts,
                "lease_expires_at": d.lease_expires_at,
                "updated_at": d.updated_at,
            }
            for d in stuck
        ],
        "index_versions": version_rows,
    }
