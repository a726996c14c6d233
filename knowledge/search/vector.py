"""The vector side of search: exact cosine over an index version's vectors, held in memory.

Each process keeps, per index version, one float32 matrix of its (L2-normalised) vectors with the
chunk and document of each row. A search compares the version's ``revision`` (read with the KB by
the search: no query of its own) with the cached one: unchanged → the matrix is used as is;
vectors added → only the new rows are read and appended; rows removed → the version is read
again. Nothing is rebuilt per query. Exact
search over 100k × 384 is one matrix-vector product (a few ms), so no approximate index is needed
at the sizes a KB reaches here.
"""

from __future__ import annotations

import functools
import threading
import uuid
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings

from knowledge.models import ChunkEmbedding, IndexVersion

_MAX_CACHED_VERSIONS = 32


@dataclass
class _Entry:
    revision: int
    last_id: int
    matrix: np.ndarray
    chunk_ids: list[uuid.UUID]
    doc_index: np.ndarray  # per row: position of its document in ``documents``
    documents: list[uuid.UUID]
    doc_positions: dict[uuid.UUID, int] = field(default_factory=dict)


_cache: dict[uuid.UUID, _Entry] = {}
_lock = threading.Lock()


def _rows(index_id: uuid.UUID, after_id: int):
    return (
        ChunkEmbedding.objects.filter(index_id=index_id, id__gt=after_id)
        .order_by("id")
        .values_list("id", "chunk_id", "chunk__document_id", "vector")
        .iterator(chunk_size=5000)
    )


def _append(entry: _Entry, index_id: uuid.UUID, dimension: int | None) -> _Entry:
    ids, chunks, docs, blobs = [], [], [], []
    for row_id, chunk_id, document_id, blob in _rows(index_id, entry.last_id):
        ids.append(row_id)
        chunks.append(chunk_id)
        docs.append(document_id)
        blobs.append(bytes(blob))
    if not ids:
        return entry
    dim = dimension or len(blobs[0]) // 4
    new = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)
    doc_index = []
    for document_id in docs:
        position = entry.doc_positions.get(document_id)
        if position is None:
            position = entry.doc_positions[document_id] = len(entry.documents)
            entry.documents.append(document_id)
        doc_index.append(position)
    matrix = new if entry.matrix.size == 0 else np.vstack([entry.matrix, new])
    return _Entry(
        revision=entry.revision,
        last_id=ids[-1],
        matrix=np.ascontiguousarray(matrix),
        chunk_ids=entry.chunk_ids + chunks,
        doc_index=np.concatenate([entry.doc_index, np.asarray(doc_index, dtype=np.int64)]),
        documents=entry.documents,
        doc_positions=entry.doc_positions,
    )


def _empty(dimension: int | None) -> _Entry:
    return _Entry(
        revision=-1,
        last_id=0,
        matrix=np.zeros((0, dimension or 0), dtype=np.float32),
        chunk_ids=[],
        doc_index=np.zeros(0, dtype=np.int64),
        documents=[],
    )


def matrix_for(index: IndexVersion) -> _Entry:
    """The cached vectors of ``index`` at ``index.revision``, which the caller has just read.

    Loading the newer rows reads the database; a current entry costs no query.
    """
    revision, dimension = index.revision, index.dimension
    entry = _cache.get(index.pk)
    if entry is not None and entry.revision == revision:
        return entry
    with _lock:
        entry = _cache.get(index.pk)
        if entry is not None and entry.revision == revision:
            return entry
        base = entry if entry is not None else _empty(dimension)
        updated = _append(base, index.pk, dimension)
        # Rows removed since (documents deleted): the appended view is too long, start over.
        if (
            entry is not None
            and len(updated.chunk_ids) != ChunkEmbedding.objects.filter(index_id=index.pk).count()
        ):
            updated = _append(_empty(dimension), index.pk, dimension)
        updated.revision = revision
        if len(_cache) >= _MAX_CACHED_VERSIONS and index.pk not in _cache:
            _cache.pop(next(iter(_cache)))
        _cache[index.pk] = updated
        return updated


def forget(index_id: uuid.UUID) -> None:
    """Drop a version from this process's cache (it was retired)."""
    _cache.pop(index_id, None)


@functools.cache
def _limit_blas_threads() -> None:
    """Set this process's BLAS threads to ``KNOWLEDGE_VECTOR_THREADS`` once, before the first ranking.

    Process-wide, on purpose: a per-call limit is not thread-safe (two searches restoring each
    other's saved value), and a server's concurrent requests want one thread each anyway.
    """
    if settings.KNOWLEDGE_VECTOR_THREADS > 0:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=settings.KNOWLEDGE_VECTOR_THREADS, user_api="blas")


def rank(
    entry: _Entry, query_vector: np.ndarray, limit: int, document_ids: set[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, float]]:
    """The ``limit`` rows of ``entry`` most similar to ``query_vector``, best first.

    Pure numpy on an already loaded entry (no database), so it can run in a worker thread next to
    the keyword query.
    """
    if entry.matrix.shape[0] == 0 or limit <= 0:
        return []
    if entry.matrix.shape[1] != query_vector.shape[0]:
        return []
    _limit_blas_threads()
    scores = entry.matrix @ query_vector.astype(np.float32, copy=False)
    if document_ids is not None:
        allowed = np.zeros(len(entry.documents), dtype=bool)
        for document_id in document_ids:
            position = entry.doc_positions.get(document_id)
            if position is not None:
                allowed[position] = True
        scores = np.where(allowed[entry.doc_index], scores, -np.inf)
    count = min(limit, scores.shape[0])
    top = np.argpartition(-scores, count - 1)[:count]
    top = top[np.argsort(-scores[top])]
    return [(entry.chunk_ids[i], float(scores[i])) for i in top if np.isfinite(scores[i])]


def vector_search(
    *, index: IndexVersion, query_vector: np.ndarray, limit: int, document_ids: set[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, float]]:
    """The ``limit`` chunks most similar to ``query_vector`` (cosine), best first."""
    return rank(matrix_for(index), query_vector, limit, document_ids)
