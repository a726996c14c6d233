"""Writes of knowledge bases: create, update (settings; an embedding change builds a new index
version while the old one keeps serving), delete, reindex.

Keyword-only, atomic, validated with ``full_clean()`` before saving, audited inside the
transaction; index builds are Jobs queued after commit.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from core.errors import ValidationError
from core.quotas import check_limit
from core.services import job_create
from knowledge.embeddings import LOCAL_MODELS, default_model, local_available
from knowledge.models import Document, IndexVersion, KnowledgeBase
from knowledge.search.keyword import LANGUAGES, reindex_kb

SETTINGS_FIELDS = (
    "name",
    "description",
    "chunk_size",
    "chunk_overlap",
    "embedding_backend",
    "embedding_model",
    "language",
)
JOB_INDEX_BUILD = "knowledge.index_build"


def _field_error(field: str, message: str, *, code: str = "ERR_VALIDATION") -> ValidationError:
    return ValidationError(f"{field}: {message}", code=code, details={"fields": {field: [message]}})


def snapshot(kb: KnowledgeBase) -> dict[str, Any]:
    """What the audit log keeps of a KB."""
    return {name: getattr(kb, name) for name in ("kind", *SETTINGS_FIELDS)}


def _full_clean(kb: KnowledgeBase) -> None:
    try:
        kb.full_clean(exclude=["org", "agent", "active_index", "created_by"], validate_unique=False)
    except DjangoValidationError as exc:
        fields = exc.message_dict
        first, messages = next(iter(fields.items()))
        name = "chunk_overlap" if first == "__all__" else first
        raise ValidationError(f"{name}: {messages[0]}", details={"fields": fields}) from exc


def _check_settings(kb: KnowledgeBase) -> None:
    if kb.chunk_overlap >= kb.chunk_size:
        raise _field_error("chunk_overlap", "Must be smaller than chunk_size.")
    if kb.language not in LANGUAGES:
        raise _field_error("language", f"Must be one of: {', '.join(LANGUAGES)}.")
    if kb.embedding_backend not in KnowledgeBase.Backend.values:
        raise _field_error("embedding_backend", f"Must be one of: {', '.join(KnowledgeBase.Backend.values)}.")
    if kb.embedding_backend == KnowledgeBase.Backend.NONE:
        kb.embedding_model = ""
    else:
        kb.embedding_model = kb.embedding_model or default_model(kb.embedding_backend)
    if kb.embedding_backend == KnowledgeBase.Backend.LOCAL:
        if kb.embedding_model not in LOCAL_MODELS:
            raise _field_error(
                "embedding_model",
                f"Local models: {', '.join(LOCAL_MODELS)}.",
                code="ERR_UNKNOWN_EMBEDDING_MODEL",
            )
        if not local_available():
            raise _field_error(
                "embedding_backend",
                "The local embedding backend is not installed on this server (requirements-local.txt).",
                code="ERR_EMBEDDING_UNAVAILABLE",
            )


def _start_index(kb: KnowledgeBase, *, actor: User | None, serve_now: bool) -> IndexVersion | None:
    """A new index version for the KB's current embedding settings.

    ``serve_now``: the KB has no chunks yet, so the empty version serves at once; otherwise it is
    built by a job and switched to when complete.
    """
    if kb.embedding_backend == KnowledgeBase.Backend.NONE:
        return None
    index = IndexVersion(org=kb.org, kb=kb, backend=kb.embedding_backend, model=kb.embedding_model)
    if serve_now:
        index.status = IndexVersion.Status.READY
        index.activated_at = timezone.now()
        index.save()
        IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.READY).exclude(pk=index.pk).update(
            status=IndexVersion.Status.RETIRED
        )
        KnowledgeBase.objects.filter(pk=kb.pk).update(active_index=index)
        kb.active_index = index
        return index
    index.save()
    job = job_create(
        kind=JOB_INDEX_BUILD,
        org=kb.org,
        actor=actor,
        payload={"index_id": str(index.pk), "kb_id": str(kb.pk)},
        message="Building the vector index",
    )
    IndexVersion.objects.filter(pk=index.pk).update(job=job)
    index.job = job
    return index


@transaction.atomic
def kb_create(
    *,
    org: Organization,
    actor: User | None,
    name: str,
    kind: str = KnowledgeBase.Kind.STANDARD,
    agent: Any = None,
    **settings: Any,
) -> KnowledgeBase:
    """A new knowledge base; with an embedding backend its (empty) vector index serves at once."""
    unknown = set(settings) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(f"Unknown settings: {', '.join(sorted(unknown))}.")
    if kind not in KnowledgeBase.Kind.values:
        raise _field_error("kind", f"Must be one of: {', '.join(KnowledgeBase.Kind.values)}.")
    if kind == KnowledgeBase.Kind.STANDARD:
        check_limit(org=org, resource="knowledge_bases")
    if agent is not None and agent.org_id != org.pk:
        raise _field_error("agent", "The agent is not of this organisation.")
    kb = KnowledgeBase(
        org=org, name=name, kind=kind, agent=agent, created_by=actor if actor and actor.pk else None
    )
    for field, value in settings.items():
        if value is not None:
            setattr(kb, field, value)
    _check_settings(kb)
    _full_clean(kb)
    kb.save()
    _start_index(kb, actor=actor, serve_now=True)
    audit_record(org=org, actor=actor, action="knowledge_base.created", entity=kb, after=snapshot(kb))
    return kb


@transaction.atomic
def kb_update(*, kb: KnowledgeBase, actor: User | None, **fields: Any) -> KnowledgeBase:
    """Change settings. A new embedding backend or model builds a new index version in a job; the
    current one keeps answering searches until the new one is complete. A new language refreshes
    the full-text index. New chunk settings apply to documents ingested (or retried) from now on."""
    unknown = set(fields) - set(SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(f"Unknown settings: {', '.join(sorted(unknown))}.")
    kb = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
    before = snapshot(kb)
    if (
        fields.get("embedding_backend") not in (None, kb.embedding_backend)
        and "embedding_model" not in fields
    ):
        fields["embedding_model"] = ""  # another backend: its default model, not the old backend's
    for field, value in fields.items():
        if value is not None or field == "embedding_model":
            setattr(kb, field, value if value is not None else "")
    _check_settings(kb)
    _full_clean(kb)
    kb.save()
    after = snapshot(kb)
    embedding_changed = (before["embedding_backend"], before["embedding_model"]) != (
        kb.embedding_backend,
        kb.embedding_model,
    )
    if embedding_changed:
        # Versions still building for an older choice are abandoned.
        IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.BUILDING).update(
            status=IndexVersion.Status.FAILED, error="Superseded by a newer embedding setting."
        )
        if kb.embedding_backend == KnowledgeBase.Backend.NONE:
            IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.READY).update(
                status=IndexVersion.Status.RETIRED
            )
            KnowledgeBase.objects.filter(pk=kb.pk).update(active_index=None)
            kb.active_index = None
        else:
            has_chunks = kb.chunks.exists()
            _start_index(kb, actor=actor, serve_now=not has_chunks)
    if before["language"] != kb.language:
        reindex_kb(kb_id=kb.pk, language=kb.language)
    if before != after:
        audit_record(
            org=kb.org, actor=actor, action="knowledge_base.updated", entity=kb, before=before, after=after
        )
    return kb


@transaction.atomic
def kb_delete(*, kb: KnowledgeBase, actor: User | None) -> None:
    """Delete a KB with its documents, chunks, vectors and stored files (files after commit)."""
    files = [name for name in Document.objects.filter(kb=kb).exclude(file="").values_list("file", flat=True)]
    before = snapshot(kb)
    kb_id, org = kb.pk, kb.org
    kb.delete()
    audit_record(
        org=org, actor=actor, action="knowledge_base.deleted", entity_type="knowledgebase", entity_id=kb_id,
        before=before,
    )  # fmt: skip
    if files:
        from knowledge.services.documents import delete_files

        transaction.on_commit(lambda: delete_files(files))


@transaction.atomic
def kb_reindex(*, kb: KnowledgeBase, actor: User | None, rechunk: bool = False) -> dict[str, Any]:
    """Rebuild the KB's indexes: the full-text index now, a fresh vector index version in a job
    (the current one serves until it is complete); ``rechunk`` also re-ingests every document with
    the KB's current chunk settings. Returns ``{"job", "index_version", "documents_requeued"}``."""
    kb = KnowledgeBase.objects.select_for_update().get(pk=kb.pk)
    reindex_kb(kb_id=kb.pk, language=kb.language)
    requeued = 0
    if rechunk:
        from knowledge.services.documents import document_requeue

        for document in Document.objects.filter(kb=kb).exclude(status=Document.Status.PROCESSING):
            document_requeue(document=document, actor=actor)
            requeued += 1
    IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.BUILDING).update(
        status=IndexVersion.Status.FAILED, error="Superseded by a reindex."
    )
    index = _start_index(kb, actor=actor, serve_now=False)
    job = index.job if index is not None else None
    if job is None:  # keyword-only KB: the full-text refresh was all; report it as a finished job
        job = job_create(kind=JOB_INDEX_BUILD, org=kb.org, actor=actor, payload={"kb_id": str(kb.pk)})
    audit_record(
        org=kb.org, actor=actor, action="knowledge_base.reindexed", entity=kb,
        after={"index_version": str(index.pk) if index else None, "rechunk": rechunk},
    )  # fmt: skip
    return {"job": job, "index_version": index, "documents_requeued": requeued}
