"""Ingestion: a document's state machine ``pending → processing → ready | failed``, and vectors.

Claiming is one conditional UPDATE (``pending``, or ``processing`` whose lease ran out) that also
counts the attempt and sets a lease; its row count says whether this worker won, so a redelivered
message or a second worker does nothing. Every later write checks the claim (status, attempt
number) again, so a worker that was presumed dead and wakes up cannot overwrite the work of the
one that took over. A beat task (``requeue_expired``) re-queues documents whose worker died
(lease expired) and pending ones that no worker ever took; after ``KNOWLEDGE_MAX_ATTEMPTS`` a
document fails with ``ERR_TOO_MANY_ATTEMPTS``.

Steps: read the bytes (upload, text, or URL through the outbound guard) → parse → chunk by
tokens → replace the document's chunks in one transaction (so chunks are never duplicated) →
full-text index → vectors for every index version of the KB that is serving or building →
``ready``. Vectors are computed once per distinct chunk text per version: identical text already
embedded in that version is copied, not embedded again. An embedding failure leaves the document
``ready`` for keyword search with ``embedded = False`` and the error noted; the admin backfill
(``/api/v1/admin/rag``) embeds what is missing later.

Progress goes to the document's Job (percent, message), which clients follow by polling or SSE.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import ApplicationError
from core.services import job_fail, job_progress, job_succeed, jobs_progress, jobs_succeed
from knowledge import parsing
from knowledge.chunking import ChunkDraft, chunk_sections
from knowledge.embeddings import embed_texts, local_encoders
from knowledge.models import Chunk, ChunkEmbedding, Document, IndexVersion, KnowledgeBase
from knowledge.search.keyword import index_chunks

logger = logging.getLogger(__name__)

MAX_URL_BYTES = parsing.MAX_UPLOAD_BYTES
PROGRESS_INTERVAL = 1.0  # seconds between progress reports of a batch being embedded


class LeaseLost(Exception):
    """Another worker took the document over (this one was presumed dead)."""


# --- the state machine -------------------------------------------------------------------------


def _claimed_fields(now: datetime) -> dict[str, Any]:
    """What a claim writes: this worker's attempt, counted, with a fresh lease and no old error."""
    return {
        "status": Document.Status.PROCESSING,
        "attempts": F("attempts") + 1,
        "lease_expires_at": now + timedelta(seconds=settings.KNOWLEDGE_LEASE_SECONDS),
        "error_code": "",
        "error_message": "",
        "updated_at": now,
    }


def claim(document_id: uuid.UUID | str) -> Document | None:
    """Take the document for this worker, or None when it is not ours to take."""
    now = timezone.now()
    won = (
        Document.objects.filter(pk=document_id)
        .filter(
            Q(status=Document.Status.PENDING) | Q(status=Document.Status.PROCESSING, lease_expires_at__lt=now)
        )
        .update(**_claimed_fields(now))
    )
    if not won:
        return None
    return Document.objects.select_related("kb", "org").get(pk=document_id)


def _mine(document: Document):
    return Document.objects.filter(
        pk=document.pk, status=Document.Status.PROCESSING, attempts=document.attempts
    )


def _renew(document: Document) -> None:
    lease = timezone.now() + timedelta(seconds=settings.KNOWLEDGE_LEASE_SECONDS)
    if not _mine(document).update(lease_expires_at=lease, updated_at=timezone.now()):
        raise LeaseLost()


def _ids_by_attempt(documents: Iterable[Document]) -> dict[int, list[Any]]:
    """The documents' ids by attempt number: a batch's writes check each claim in one statement."""
    by_attempt: dict[int, list[Any]] = {}
    for document in documents:
        by_attempt.setdefault(document.attempts, []).append(document.pk)
    return by_attempt


def _renew_all(documents: list[Document]) -> None:
    """``_renew`` of many documents in one UPDATE per attempt number; LeaseLost if any was lost."""
    if len(documents) == 1:
        _renew(documents[0])
        return
    lease = timezone.now() + timedelta(seconds=settings.KNOWLEDGE_LEASE_SECONDS)
    for attempts, ids in _ids_by_attempt(documents).items():
        renewed = Document.objects.filter(
            pk__in=ids, status=Document.Status.PROCESSING, attempts=attempts
        ).update(lease_expires_at=lease, updated_at=timezone.now())
        if renewed != len(ids):
            raise LeaseLost()


def _fail(document: Document, code: str, message: str) -> None:
    updated = _mine(document).update(
        status=Document.Status.FAILED,
        error_code=code[:64],
        error_message=message[:500],
        lease_expires_at=None,
        updated_at=timezone.now(),
    )
    if updated and document.job_id:
        job_fail(job_id=document.job_id, code=code, message=message)


def _progress(document: Document, percent: int, message: str) -> None:
    _renew(document)
    if document.job_id:
        job_progress(job_id=document.job_id, percent=percent, message=message)


# --- reading and parsing -----------------------------------------------------------------------


def _fetch_url(url: str) -> tuple[bytes, str]:
    from core.outbound import guarded_client

    with guarded_client(follow_redirects=True, max_redirects=5) as client:
        with client.stream("GET", url, headers={"User-Agent": "agent-platform-knowledge/1"}) as response:
            if response.status_code >= 400:
                raise ApplicationError(
                    f"Fetching the URL answered HTTP {response.status_code}.", code="ERR_FETCH_FAILED"
                )
            chunks, size = [], 0
            for piece in response.iter_bytes():
                size += len(piece)
                if size > MAX_URL_BYTES:
                    raise parsing.FileTooLarge()
                chunks.append(piece)
            return b"".join(chunks), response.headers.get("content-type", "")


def _sections(document: Document) -> list[parsing.Section]:
    if document.source == Document.Source.URL:
        data, content_type = _fetch_url(document.source_url)
        name = document.source_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        if "html" in content_type:
            name = "page.html"
        elif "." not in name:
            name = ""
        file_type = parsing.sniff(data, name)
        Document.objects.filter(pk=document.pk).update(file_type=file_type, size_bytes=len(data))
        return parsing.parse(data, file_type)
    if document.file:
        with default_storage.open(document.file.name, "rb") as handle:
            data = handle.read()
        return parsing.parse(data, document.file_type or parsing.sniff(data, document.filename))
    return parsing.parse_text(document.text, document.file_type or "text")


# --- vectors -----------------------------------------------------------------------------------


def target_indexes(kb_id: Any) -> list[IndexVersion]:
    """Versions that must receive vectors of new chunks: the serving one and any being built."""
    serving = KnowledgeBase.objects.filter(pk=kb_id).values_list("active_index_id", flat=True).first()
    return list(
        IndexVersion.objects.filter(kb_id=kb_id).filter(
            Q(pk=serving) | Q(status=IndexVersion.Status.BUILDING)
        )
    )


def known_vectors(index: IndexVersion, hashes: Iterable[str]) -> dict[str, bytes]:
    """Vectors ``index`` already holds for these chunk texts (by content hash)."""
    known: dict[str, bytes] = {}
    for content_hash, blob in (
        ChunkEmbedding.objects.filter(index=index, chunk__content_hash__in=list(set(hashes)))
        .values_list("chunk__content_hash", "vector")
        .iterator()
    ):
        known.setdefault(content_hash, bytes(blob))
    return known


def embed_chunks(
    *, index: IndexVersion, chunks: list[tuple[uuid.UUID, str, str]], org: Any,
    on_batch: Callable[[int, int], None] | None = None,
    precomputed: Callable[[], dict[str, np.ndarray]] | None = None,
) -> int:  # fmt: skip
    """Store vectors of ``chunks`` (``(id, text, content_hash)``) in ``index``; returns how many.

    Text already embedded in this version (same hash) is copied; the rest is embedded in batches.
    ``precomputed`` returns vectors by content hash computed elsewhere (a thread that encoded them
    while this one did database work); whatever it lacks is embedded here.
    """
    if not chunks:
        return 0
    known = known_vectors(index, (content_hash for _, _, content_hash in chunks))
    ready = precomputed() if precomputed is not None else {}
    todo, seen = [], set(known)
    for cid, text, content_hash in chunks:
        if content_hash not in seen:
            seen.add(content_hash)
            todo.append((cid, text, content_hash))
    batch = max(1, settings.KNOWLEDGE_EMBED_BATCH) * 4
    stored = 0
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        if all(content_hash in ready for _, _, content_hash in part):
            vectors = np.stack([ready[content_hash] for _, _, content_hash in part])
        else:
            vectors = embed_texts(
                org=org, texts=[text for _, text, _ in part], backend=index.backend, model=index.model
            )
        if vectors is None:
            return stored
        if index.dimension is None:
            IndexVersion.objects.filter(pk=index.pk, dimension__isnull=True).update(
                dimension=vectors.shape[1]
            )
            index.dimension = vectors.shape[1]
        elif vectors.shape[1] != index.dimension:
            raise ApplicationError(
                f"The model returned {vectors.shape[1]}-dimensional vectors; "
                f"this index holds {index.dimension}.",
                code="ERR_EMBEDDING_DIMENSION",
            )
        for (_, _, content_hash), vector in zip(part, vectors, strict=True):
            known.setdefault(content_hash, np.asarray(vector, dtype=np.float32).tobytes())
        if on_batch is not None:
            on_batch(start + len(part), len(todo))
    rows = [ChunkEmbedding(index=index, chunk_id=cid, vector=known[h]) for cid, _, h in chunks if h in known]
    with transaction.atomic():
        ChunkEmbedding.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
        IndexVersion.objects.filter(pk=index.pk).update(revision=F("revision") + 1)
    stored += len(rows)
    return stored


def missing_chunks(index: IndexVersion, *, limit: int | None = None) -> list[tuple[uuid.UUID, str, str]]:
    """Chunks of the index's KB without a vector in it (oldest first)."""
    rows = (
        Chunk.objects.filter(kb_id=index.kb_id)
        .exclude(embeddings__index=index)
        .order_by("created_at", "seq")
        .values_list("id", "text", "content_hash")
    )
    return list(rows[:limit] if limit else rows)


def _mark_embedded(kb_id: Any) -> None:
    """Set ``Document.embedded`` from whether the serving index holds all of a document's chunks."""
    serving = KnowledgeBase.objects.filter(pk=kb_id).values_list("active_index_id", flat=True).first()
    if serving is None:
        Document.objects.filter(kb_id=kb_id, embedded=True).update(embedded=False)
        return
    lacking = (
        Chunk.objects.filter(kb_id=kb_id)
        .exclude(embeddings__index_id=serving)
        .values("document_id")
        .distinct()
    )
    Document.objects.filter(kb_id=kb_id).exclude(pk__in=lacking).update(embedded=True)
    Document.objects.filter(kb_id=kb_id, pk__in=lacking).update(embedded=False)


# --- ingestion ---------------------------------------------------------------------------------


def _guarded(document: Document, step: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one step of a document's ingestion; a failure fails the document. ``(ok, value)``."""
    try:
        return True, step()
    except LeaseLost:
        logger.info("document %s was taken over by another worker", document.pk)
        return False, None
    except ApplicationError as exc:
        _fail(document, exc.code, exc.message)
        return False, Document.Status.FAILED
    except Exception as exc:
        logger.exception("ingesting document %s crashed", document.pk)
        _fail(document, "ERR_INGEST_FAILED", f"Ingestion failed unexpectedly ({type(exc).__name__}).")
        return False, Document.Status.FAILED


def _draft(document: Document) -> list[ChunkDraft]:
    """Read, parse and chunk the document: no writes, so a bulk ingestion stores many at once."""
    kb = document.kb
    drafts = chunk_sections(_sections(document), chunk_size=kb.chunk_size, overlap=kb.chunk_overlap)
    if not drafts:
        raise ApplicationError("The document holds no text.", code="ERR_NO_TEXT")
    return drafts


def _store_chunks(drafted: list[tuple[Document, list[ChunkDraft]]]) -> list[tuple[Document, list[Chunk]]]:
    """Replace the chunks (and full-text entries) of the documents still ours, in one transaction.

    Returns those documents with their new rows; a document another worker took over is left out.
    One statement of each kind for the whole batch: per-document statements were most of a bulk
    ingestion's database work.
    """
    with transaction.atomic():
        attempts = dict(
            Document.objects.select_for_update()
            .filter(pk__in=[document.pk for document, _ in drafted], status=Document.Status.PROCESSING)
            .values_list("pk", "attempts")
        )
        mine = [(doc, drafts) for doc, drafts in drafted if attempts.get(doc.pk) == doc.attempts]
        if not mine:
            return []
        ids = [document.pk for document, _ in mine]
        had_vectors = set(
            ChunkEmbedding.objects.filter(chunk__document_id__in=ids).values_list("chunk__kb_id", flat=True)
        )
        Chunk.objects.filter(document_id__in=ids).delete()  # a retry replaces, never adds
        stored = []
        for document, drafts in mine:
            rows = [
                Chunk(
                    org_id=document.org_id,
                    kb_id=document.kb_id,
                    document=document,
                    seq=draft.seq,
                    text=draft.text,
                    token_count=draft.token_count,
                    page=draft.page,
                    section=draft.section,
                    metadata=draft.metadata,
                    content_hash=draft.content_hash,
                )  # fmt: skip
                for draft in drafts
            ]
            document.chunk_count = len(rows)
            document.token_count = sum(draft.token_count for draft in drafts)
            document.embedded = False
            stored.append((document, rows))
        Chunk.objects.bulk_create([row for _, rows in stored for row in rows], batch_size=1000)
        for kb_id, language in {(document.kb_id, document.kb.language) for document, _ in mine}:
            index_chunks(document_ids=[d.pk for d, _ in mine if d.kb_id == kb_id], language=language)
        if had_vectors:
            IndexVersion.objects.filter(kb_id__in=had_vectors).update(revision=F("revision") + 1)
        Document.objects.bulk_update([doc for doc, _ in mine], ["chunk_count", "token_count", "embedded"])
    return stored


def _store_one(document: Document, drafts: list[ChunkDraft]) -> list[Chunk]:
    stored = _store_chunks([(document, drafts)])
    if not stored:
        raise LeaseLost()
    return stored[0][1]


def _prepare(document: Document, *, report: bool = True) -> list[Chunk]:
    """Read, parse and chunk the document; replace its chunks (and full-text entries) in one go.

    ``report=False`` skips the two progress writes (the claim has just set the lease).
    """
    if report:
        _progress(document, 5, "Reading the document")
    rows = _store_one(document, _draft(document))
    if report:
        _progress(document, 40, f"{len(rows)} chunks; embedding")
    return rows


def _job_result(document: Document, rows: list[Chunk], embed_error: tuple[str, str] | None) -> dict[str, Any]:
    result: dict[str, Any] = {"document_id": str(document.pk), "status": "ready", "chunks": len(rows)}
    if embed_error:
        result["warning"] = {"code": embed_error[0], "message": embed_error[1]}
    return result


def _ready_fields(document: Document, embed_error: tuple[str, str] | None) -> dict[str, Any]:
    now = timezone.now()
    return {
        "status": Document.Status.READY,
        "lease_expires_at": None,
        "processed_at": now,
        "embedded": embed_error is None and document.kb.active_index_id is not None,
        "error_code": embed_error[0] if embed_error else "",
        "error_message": embed_error[1] if embed_error else "",
        "updated_at": now,
    }


def _finish(document: Document, rows: list[Chunk], embed_error: tuple[str, str] | None) -> str:
    with transaction.atomic():
        if not _mine(document).update(**_ready_fields(document, embed_error)):
            raise LeaseLost()
    if document.job_id:
        job_succeed(job_id=document.job_id, result=_job_result(document, rows, embed_error), message="Ready")
    return Document.Status.READY


class _NotAllMine(Exception):
    """A document of a batch was taken over: the batch is finished one document at a time."""


def _finish_many(group: list[tuple[Document, list[Chunk]]], embed_error: tuple[str, str] | None) -> None:
    """:func:`_finish` of a wave's documents (one KB): one UPDATE per attempt number, one for the
    jobs; raises ``_NotAllMine`` (rolled back) when any of them is no longer ours."""
    fields = _ready_fields(group[0][0], embed_error)
    with transaction.atomic():
        for attempts, ids in _ids_by_attempt(document for document, _ in group).items():
            updated = Document.objects.filter(
                pk__in=ids, status=Document.Status.PROCESSING, attempts=attempts
            ).update(**fields)
            if updated != len(ids):
                raise _NotAllMine()
        jobs_succeed(
            results={
                document.job_id: _job_result(document, rows, embed_error)
                for document, rows in group
                if document.job_id
            },
            message="Ready",
        )


def _claim_for_work(document_id: uuid.UUID | str) -> tuple[Document | None, str | None]:
    document = claim(document_id)
    if document is None:
        return None, None
    if _gave_up(document):
        return None, Document.Status.FAILED
    return document, None


def _gave_up(document: Document) -> bool:
    """Fail a claimed document past ``KNOWLEDGE_MAX_ATTEMPTS``; True when it was."""
    if document.attempts <= settings.KNOWLEDGE_MAX_ATTEMPTS:
        return False
    _fail(document, "ERR_TOO_MANY_ATTEMPTS", f"Gave up after {settings.KNOWLEDGE_MAX_ATTEMPTS} attempts.")
    return True


def _others_pending(kb_id: Any) -> bool:
    return Document.objects.filter(kb_id=kb_id, status=Document.Status.PENDING).exists()


CLAIM_BATCH = 16  # pending documents a bulk ingestion claims at a time


def _claim_pending(kb_id: Any, limit: int) -> list[Document]:
    """Up to ``limit`` of the KB's oldest pending documents, claimed for this worker in one UPDATE.

    Rows another worker is claiming at the same moment are skipped, not waited for (PostgreSQL's
    ``SKIP LOCKED``; SQLite's write transactions take turns). Documents past
    ``KNOWLEDGE_MAX_ATTEMPTS`` fail instead of being returned.
    """
    now = timezone.now()
    with transaction.atomic():
        ids = list(
            Document.objects.select_for_update(skip_locked=True)
            .filter(kb_id=kb_id, status=Document.Status.PENDING)
            .order_by("created_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return []
        Document.objects.filter(pk__in=ids, status=Document.Status.PENDING).update(**_claimed_fields(now))
    claimed = []
    for document in Document.objects.select_related("kb", "org").filter(pk__in=ids).order_by("created_at"):
        if not _gave_up(document):
            claimed.append(document)
    return claimed


def _with_pending(first: list[Document]) -> Iterator[Document]:
    """``first``, then pending documents of its KB claimed ``CLAIM_BATCH`` at a time as the bulk
    needs them.

    Until none is left, or ``KNOWLEDGE_INGEST_BULK_DOCS`` are taken (0: no count limit), and none
    claimed once a quarter of the task's soft time limit has gone: the documents already taken must
    finish well within it.
    """
    yield from first
    kb_id = first[0].kb_id
    deadline = time.monotonic() + settings.CELERY_TASK_SOFT_TIME_LIMIT / 4
    limit = settings.KNOWLEDGE_INGEST_BULK_DOCS
    taken = len(first)
    while (not limit or taken < limit) and time.monotonic() <= deadline:
        batch = _claim_pending(kb_id, min(CLAIM_BATCH, limit - taken) if limit else CLAIM_BATCH)
        if not batch:
            return
        taken += len(batch)
        yield from batch


def ingest_document(document_id: uuid.UUID | str) -> str | None:
    """Ingest the document now (in this process); returns its final status, None when not ours.

    Safe to call any number of times: only a caller that claims the document works on it. When
    other documents of its KB are pending too (a bulk upload), this worker takes them as well
    (``KNOWLEDGE_INGEST_BULK_DOCS``: how many; 0, the default, as many as there are) and ingests
    them together (:func:`ingest_documents`); their own jobs are finished with them, and find
    nothing left to do when a worker runs them.
    """
    document, outcome = _claim_for_work(document_id)
    if document is None:
        return outcome
    if settings.KNOWLEDGE_INGEST_BULK_DOCS != 1 and _others_pending(document.kb_id):
        outcomes: dict[str, str | None] = {}
        _ingest_claimed(_with_pending([document]), outcomes)
        return outcomes.get(str(document.pk))
    ok, rows = _guarded(document, lambda: _prepare(document))
    if not ok:
        return rows
    ok, embed_error = _guarded(document, lambda: _embed_document([document], document.kb, rows))
    if not ok:
        return embed_error
    ok, status = _guarded(document, lambda: _finish(document, rows, embed_error))
    return status


WAVE_CHUNKS = 128  # chunks per wave of a bulk ingestion (encoded while the next wave is prepared)
# How long a thread may hold the GIL while another waits, during bulk ingestion (Python's default is
# 5 ms). The encoding thread needs the GIL between every torch operation; while this thread runs
# ORM code, a 5 ms wait each time made encoding several times slower (measured: 4.4 s alone,
# 27.9 s next to a busy Python thread; 8.1 s with 0.2 ms turns).
INGEST_SWITCH_INTERVAL = 0.0002
_switch_lock = threading.Lock()
_switch_users = 0
_switch_default = sys.getswitchinterval()


@contextlib.contextmanager
def _short_gil_turns() -> Iterator[None]:
    """Short GIL turns while a bulk ingestion encodes in threads (process-wide; the last of
    concurrent ingestions to finish restores the interval)."""
    global _switch_users, _switch_default
    with _switch_lock:
        if _switch_users == 0:
            _switch_default = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_default, INGEST_SWITCH_INTERVAL))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_default)


@functools.cache
def _encoder_threads() -> ThreadPoolExecutor:
    """One thread per copy of the local model that may encode at once (``local_encoders``)."""
    return ThreadPoolExecutor(max_workers=local_encoders(), thread_name_prefix="knowledge-ingest-embed")


def _encode_local(index: IndexVersion, texts: dict[str, str]) -> dict[str, np.ndarray]:
    """Vectors of ``texts`` (by content hash) from the local model: no database, thread-safe."""
    if not texts:
        return {}
    hashes = list(texts)
    vectors = embed_texts(org=None, texts=[texts[h] for h in hashes], backend="local", model=index.model)
    if vectors is None:
        return {}
    return dict(zip(hashes, vectors, strict=True))


@dataclass
class _Wave:
    """Prepared documents of one KB whose local-model vectors are being computed in a thread."""

    group: list[tuple[Document, list[Chunk]]]
    indexes: list[IndexVersion]
    pending: dict[Any, Future] = field(default_factory=dict)


def _start_wave(group: list[tuple[Document, list[Chunk]]]) -> _Wave:
    kb_id = group[0][0].kb_id
    wave = _Wave(group=group, indexes=target_indexes(kb_id))
    texts = {row.content_hash: row.text for _, rows in group for row in rows}
    for index in wave.indexes:
        if index.backend != "local":
            continue  # the provider goes through the choke point (database, network): on this thread
        known = known_vectors(index, texts)
        todo = {h: text for h, text in texts.items() if h not in known}
        wave.pending[index.pk] = _encoder_threads().submit(_encode_local, index, todo)
    return wave


def _finish_wave(wave: _Wave, outcomes: dict[str, str | None]) -> None:
    documents = [document for document, _ in wave.group]
    all_rows = [row for _, rows in wave.group for row in rows]
    try:
        embed_error = _embed_document(
            documents, documents[0].kb, all_rows, indexes=wave.indexes, pending=wave.pending
        )
    except LeaseLost:
        embed_error = ("ERR_EMBEDDING_FAILED", "A document of the batch was taken over; vectors to backfill.")
    finally:
        for future in wave.pending.values():
            future.cancel()
    try:
        _finish_many(wave.group, embed_error)
    except Exception as exc:  # one at a time, each in a savepoint: a lost document fails alone
        if not isinstance(exc, _NotAllMine):
            logger.warning(
                "finishing a batch of %d documents failed; one by one", len(wave.group), exc_info=True
            )
        with transaction.atomic():
            for document, rows in wave.group:
                finish = functools.partial(_finish_atomic, document, rows, embed_error)
                outcomes[str(document.pk)] = _guarded(document, finish)[1]
        return
    for document, _ in wave.group:
        outcomes[str(document.pk)] = Document.Status.READY


def _finish_atomic(document: Document, rows: list[Chunk], embed_error: tuple[str, str] | None) -> str:
    with transaction.atomic():  # a savepoint: a failure rolls back this document only
        return _finish(document, rows, embed_error)


def ingest_documents(document_ids: Iterable[uuid.UUID | str]) -> dict[str, str | None]:
    """Ingest several documents together (bulk uploads, benchmarks); returns each one's status.

    Each document is parsed and chunked on its own (one bad file fails alone). They are stored,
    embedded and finished in waves of about ``WAVE_CHUNKS`` chunks of one KB, each write a
    statement per wave rather than per document (should a wave's write fail, its documents are
    written one by one). While the local model's copies (``KNOWLEDGE_LOCAL_ENCODERS``, one core
    each) encode waves in threads (torch releases the GIL), this thread prepares the next wave and
    finishes the oldest, so the database work hides behind the encoding instead of adding to it.
    Full batches keep the model efficient too.
    """
    outcomes: dict[str, str | None] = {}

    def claimed() -> Iterator[Document]:
        for document_id in document_ids:
            document, outcome = _claim_for_work(document_id)
            if document is None:
                outcomes[str(document_id)] = outcome
            else:
                yield document

    _ingest_claimed(claimed(), outcomes)
    return outcomes


def ingest_or_wait(document_id: uuid.UUID | str, *, poll_seconds: float = 0.5) -> str | None:
    """The document's final status: ingested here, or by the worker that holds it (None: deleted).

    A document's job may run while another worker has the document in a bulk ingestion; the job
    then waits for that worker instead of calling the document done. While it waits it takes the
    KB's other pending documents in a bulk of its own (as the job of a pending document would), so
    a bulk upload keeps every worker process encoding rather than one encoding while the others
    wait on it. Should the holder die, its lease runs out and this caller takes the document over.
    """
    while True:
        status = ingest_document(document_id)
        if status is not None:
            return status
        row = Document.objects.filter(pk=document_id).values_list("status", "kb_id").first()
        if row is None:
            return None
        current, kb_id = row
        if current != Document.Status.PROCESSING:
            return current
        if not _help_with_pending(kb_id):
            time.sleep(poll_seconds)


def _help_with_pending(kb_id: Any) -> bool:
    """Ingest pending documents of the KB in a bulk claimed here; False when none was left."""
    batch = _claim_pending(kb_id, CLAIM_BATCH)
    if not batch:
        return False
    _ingest_claimed(_with_pending(batch), {})
    return True


def _ingest_claimed(documents: Iterable[Document], outcomes: dict[str, str | None]) -> None:
    """The bulk loop of :func:`ingest_documents` over documents this worker has claimed."""
    with _short_gil_turns():
        _ingest_waves(documents, outcomes)


def _ingest_waves(documents: Iterable[Document], outcomes: dict[str, str | None]) -> None:
    drafted: list[tuple[Document, list[ChunkDraft]]] = []
    running: deque[_Wave] = deque()  # oldest first
    in_flight = local_encoders()  # waves encoding at once, one per copy of the model

    def flush() -> None:
        nonlocal drafted
        if not drafted:
            return
        group = _store_wave(drafted, outcomes)
        drafted = []
        if group:
            running.append(_start_wave(group))  # queued behind the running waves' encoding
        while len(running) > in_flight:
            _finish_wave(running.popleft(), outcomes)

    for document in documents:
        ok, drafts = _guarded(document, lambda document=document: _draft(document))
        if not ok:
            outcomes[str(document.pk)] = drafts
            continue
        if drafted and drafted[0][0].kb_id != document.kb_id:
            flush()
        drafted.append((document, drafts))
        if sum(len(chunk_drafts) for _, chunk_drafts in drafted) >= WAVE_CHUNKS:
            flush()
    flush()
    while running:
        _finish_wave(running.popleft(), outcomes)


def _store_wave(
    drafted: list[tuple[Document, list[ChunkDraft]]], outcomes: dict[str, str | None]
) -> list[tuple[Document, list[Chunk]]]:
    """Store a wave's chunks in one transaction; should that fail, each document's alone, so a
    document whose rows the database refuses fails by itself. Documents lost to another worker are
    dropped (their outcome: None)."""
    try:
        stored = _store_chunks(drafted)
    except Exception:
        logger.warning(
            "storing a batch of %d documents failed; storing them one by one", len(drafted), exc_info=True
        )
        stored = []
        for document, drafts in drafted:
            ok, rows = _guarded(document, lambda d=document, c=drafts: _store_one(d, c))
            if ok:
                stored.append((document, rows))
            else:
                outcomes[str(document.pk)] = rows
        return stored
    kept = {document.pk for document, _ in stored}
    for document, _ in drafted:
        if document.pk not in kept:
            logger.info("document %s was taken over by another worker", document.pk)
            outcomes[str(document.pk)] = None
    return stored


def _embed_document(
    documents: list[Document], kb: KnowledgeBase, rows: list[Chunk],
    indexes: list[IndexVersion] | None = None, pending: dict[Any, Future] | None = None,
) -> tuple[str, str] | None:  # fmt: skip
    """Vectors of the new chunks in every target version; the error (code, message) if it failed.

    ``pending``: per index id, a future of vectors by content hash already being computed.
    """
    indexes = target_indexes(kb.pk) if indexes is None else indexes
    if not indexes:
        return None
    chunks = [(row.pk, row.text, row.content_hash) for row in rows]
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        # A batch of many documents renews their leases in one UPDATE per attempt number and
        # reports at most every PROGRESS_INTERVAL seconds: per-document writes after every
        # encoder batch cost as much as the embedding of small documents.
        if done < total and time.monotonic() - last[0] < PROGRESS_INTERVAL:
            return
        last[0] = time.monotonic()
        _renew_all(documents)
        percent = 40 + int(55 * done / max(total, 1))
        job_ids = [document.job_id for document in documents if document.job_id]
        if job_ids:
            jobs_progress(job_ids=job_ids, percent=percent, message=f"Embedded {done}/{total} chunks")

    try:
        for index in indexes:
            future = (pending or {}).get(index.pk)
            embed_chunks(
                index=index, chunks=chunks, org=kb.org, on_batch=report,
                precomputed=future.result if future is not None else None,
            )  # fmt: skip
    except LeaseLost:
        raise
    except ApplicationError as exc:
        logger.warning("embedding for kb %s failed: %s", kb.pk, exc.message)
        return exc.code, f"Keyword search only until the vectors are backfilled: {exc.message}"
    except Exception as exc:
        logger.exception("embedding for kb %s crashed", kb.pk)
        return (
            "ERR_EMBEDDING_FAILED",
            f"Keyword search only until the vectors are backfilled ({type(exc).__name__}).",
        )
    return None


def requeue_expired(*, enqueue: Callable[[str], Any] | None = None) -> list[str]:
    """Documents to hand to a worker again: processing with an expired lease (their worker died),
    and pending ones older than a lease that no worker took (the message was lost)."""
    now = timezone.now()
    stale_pending = now - timedelta(seconds=settings.KNOWLEDGE_LEASE_SECONDS)
    ids = [
        str(pk)
        for pk in Document.objects.filter(
            Q(status=Document.Status.PROCESSING, lease_expires_at__lt=now)
            | Q(status=Document.Status.PENDING, updated_at__lt=stale_pending)
        ).values_list("pk", flat=True)[:500]
    ]
    if enqueue is not None:
        for document_id in ids:
            enqueue(document_id)
    return ids


# --- index versions ----------------------------------------------------------------------------


def build_index(
    index_id: uuid.UUID | str, *, report: Callable[[int, str], Any] | None = None
) -> dict[str, Any]:
    """Embed every chunk of the KB into a building version, then make it the serving one.

    The old version answers searches until the switch, which is one UPDATE of the KB inside a
    transaction that also retires the old version; chunks added meanwhile are caught by a last pass.
    """
    index = IndexVersion.objects.select_related("kb", "org").filter(pk=index_id).first()
    if index is None or index.status != IndexVersion.Status.BUILDING:
        return {"index_version": str(index_id), "status": index.status if index else "gone"}
    total = Chunk.objects.filter(kb_id=index.kb_id).count()
    done = 0
    while True:
        batch = missing_chunks(index, limit=2000)
        if not batch:
            break
        done += embed_chunks(index=index, chunks=batch, org=index.org)
        if report is not None:
            report(min(95, int(95 * done / max(total, 1))), f"Embedded {done}/{total} chunks")
        if not IndexVersion.objects.filter(pk=index.pk, status=IndexVersion.Status.BUILDING).exists():
            return {"index_version": str(index.pk), "status": "superseded"}
    with transaction.atomic():
        kb = KnowledgeBase.objects.select_for_update().get(pk=index.kb_id)
        if not IndexVersion.objects.filter(pk=index.pk, status=IndexVersion.Status.BUILDING).exists():
            return {"index_version": str(index.pk), "status": "superseded"}
        previous = kb.active_index_id
        IndexVersion.objects.filter(kb=kb, status=IndexVersion.Status.READY).update(
            status=IndexVersion.Status.RETIRED
        )
        IndexVersion.objects.filter(pk=index.pk).update(
            status=IndexVersion.Status.READY, activated_at=timezone.now(), revision=F("revision") + 1
        )
        KnowledgeBase.objects.filter(pk=kb.pk).update(active_index=index)
    # Chunks stored between the last pass and the switch by an ingest that did not see this version.
    late = missing_chunks(index)
    if late:
        embed_chunks(index=index, chunks=late, org=index.org)
    _mark_embedded(index.kb_id)
    if previous and previous != index.pk:
        # The old vectors are no longer served: drop them to free the space.
        ChunkEmbedding.objects.filter(index_id=previous).delete()
    return {
        "index_version": str(index.pk),
        "status": "ready",
        "chunks": total,
        "previous": str(previous or ""),
    }


def backfill(*, org: Any, report: Callable[[int, str], Any] | None = None) -> dict[str, Any]:
    """Embed every chunk of the org that its KB's serving index lacks; returns counts."""
    indexes = list(
        IndexVersion.objects.filter(org=org, status=IndexVersion.Status.READY).select_related("org")
    )
    embedded, failed = 0, []
    for position, index in enumerate(indexes):
        try:
            while True:
                batch = missing_chunks(index, limit=2000)
                if not batch:
                    break
                embedded += embed_chunks(index=index, chunks=batch, org=index.org)
        except ApplicationError as exc:
            failed.append({"kb_id": str(index.kb_id), "code": exc.code, "message": exc.message})
        _mark_embedded(index.kb_id)
        Document.objects.filter(kb_id=index.kb_id, embedded=True, status=Document.Status.READY).exclude(
            error_code=""
        ).update(error_code="", error_message="")
        if report is not None:
            report(int(100 * (position + 1) / max(len(indexes), 1)), f"{position + 1}/{len(indexes)} indexes")
    return {"indexes": len(indexes), "embedded": embedded, "failed": failed}


def documents_of(ids: Iterable[str]) -> list[Document]:
    return list(Document.objects.filter(pk__in=list(ids)))
