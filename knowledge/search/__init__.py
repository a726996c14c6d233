"""Search of a knowledge base: keyword, vector or hybrid (reciprocal rank fusion of both).

``search(kb=…, query=…)`` is the one entry point (the API, the ``knowledge_search`` tool and agent
memory call it). Keyword ranking comes from the database's full-text index
(:mod:`knowledge.search.keyword`), vector ranking from an in-memory exact cosine over the KB's
serving index version (:mod:`knowledge.search.vector`). Hybrid fuses the two rankings by RRF,
``score = w_kw / (k + rank_kw) + w_vec / (k + rank_vec)`` (``KNOWLEDGE_RRF_*`` settings). A KB with
no serving vector index, or whose query embedding fails, answers hybrid searches from the keyword
side alone and says so in ``SearchResult.mode_used``.

Filters: ``{"document_ids": [...], "metadata": {key: value}}`` (document metadata, exact match).
"""

from __future__ import annotations

import functools
import html
import logging
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings

from core.errors import ValidationError
from knowledge.models import Chunk, Document, IndexVersion, KnowledgeBase

from .keyword import keyword_search, query_terms
from .vector import matrix_for, vector_search
from .vector import rank as rank_vectors

logger = logging.getLogger(__name__)

MODES = ("hybrid", "vector", "keyword")
MAX_TOP_K = 100
SNIPPET_CHARS = 240


@dataclass
class SearchHit:
    """One ranked chunk, with where it came from and a highlighted snippet."""

    document_id: uuid.UUID
    chunk_id: uuid.UUID
    score: float
    text: str
    snippet: str
    page: int | None
    metadata: dict[str, Any]
    title: str
    section: str = ""
    seq: int = 0
    keyword_rank: int | None = None
    vector_rank: int | None = None
    keyword_score: float | None = None
    vector_score: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "document_id": str(self.document_id),
            "chunk_id": str(self.chunk_id),
            "score": self.score,
            "text": self.text,
            "snippet": self.snippet,
            "page": self.page,
            "section": self.section,
            "seq": self.seq,
            "title": self.title,
            "metadata": self.metadata,
            "keyword_rank": self.keyword_rank,
            "vector_rank": self.vector_rank,
            "keyword_score": self.keyword_score,
            "vector_score": self.vector_score,
        }


@dataclass
class SearchResult:
    """Hits plus how they were found."""

    hits: list[SearchHit]
    mode: str
    mode_used: str
    index_version: uuid.UUID | None = None
    notes: list[str] = field(default_factory=list)


class NoVectorIndex(ValidationError):
    code = "ERR_NO_VECTOR_INDEX"
    message = "This knowledge base has no vector index: use keyword search or configure an embedding backend."


def rrf(
    rankings: list[tuple[list[tuple[uuid.UUID, float]], float]], *, k: int
) -> list[tuple[uuid.UUID, float, list[int | None]]]:
    """Reciprocal rank fusion of ``[(ranking, weight)]``: ``[(id, score, [rank in each])]`` best first."""
    scores: dict[uuid.UUID, float] = {}
    ranks: dict[uuid.UUID, list[int | None]] = {}
    for position, (ranking, weight) in enumerate(rankings):
        for rank, (item, _score) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            ranks.setdefault(item, [None] * len(rankings))[position] = rank
    ordered = sorted(scores.items(), key=lambda pair: -pair[1])
    return [(item, score, ranks[item]) for item, score in ordered]


def highlight(text: str, terms: list[str], *, width: int = SNIPPET_CHARS) -> str:
    """A window of ``text`` around the first query term, HTML-escaped, terms wrapped in ``<mark>``."""
    if not text:
        return ""
    stems = [term[: max(4, len(term) - 2)] if len(term) > 5 else term for term in terms]
    pattern = (
        re.compile(r"\b(" + "|".join(re.escape(s) for s in stems) + r")\w*", re.IGNORECASE) if stems else None
    )
    start = 0
    if pattern is not None:
        first = pattern.search(text)
        if first is not None:
            start = max(0, first.start() - width // 4)
            space = text.rfind(" ", 0, start)
            start = space + 1 if start and space >= 0 else start
    window = text[start : start + width]
    prefix = "…" if start > 0 else ""
    suffix = "…" if start + width < len(text) else ""
    if pattern is None:
        return prefix + html.escape(window) + suffix
    out, last = [], 0
    for match in pattern.finditer(window):
        out.append(html.escape(window[last : match.start()]))
        out.append("<mark>" + html.escape(match.group(0)) + "</mark>")
        last = match.end()
    out.append(html.escape(window[last:]))
    return prefix + "".join(out) + suffix


def _allowed_documents(kb: KnowledgeBase, filters: dict[str, Any] | None) -> set[uuid.UUID] | None:
    if not filters:
        return None
    unknown = set(filters) - {"document_ids", "metadata"}
    if unknown:
        raise ValidationError(
            f"Unknown filters: {', '.join(sorted(unknown))}; use document_ids and metadata.",
            code="ERR_BAD_FILTER",
        )
    documents = Document.objects.filter(kb=kb)
    if filters.get("document_ids") is not None:
        ids = filters["document_ids"]
        if not isinstance(ids, list):
            raise ValidationError("filters.document_ids must be a list of ids.", code="ERR_BAD_FILTER")
        try:
            documents = documents.filter(pk__in=[uuid.UUID(str(value)) for value in ids])
        except ValueError as exc:
            raise ValidationError(
                "filters.document_ids must hold document ids.", code="ERR_BAD_FILTER"
            ) from exc
    metadata = filters.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValidationError("filters.metadata must be an object.", code="ERR_BAD_FILTER")
    for key, value in metadata.items():
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", str(key)):
            raise ValidationError(f"filters.metadata: bad key {key!r}.", code="ERR_BAD_FILTER")
        documents = documents.filter(**{f"metadata__{key}": value})
    return set(documents.values_list("pk", flat=True))


def _serving_index(kb: KnowledgeBase) -> IndexVersion | None:
    """The KB's serving index version, from the row ``run_search`` read with the KB (no query)."""
    index = kb.active_index
    return index if index is not None and index.status == IndexVersion.Status.READY else None


@functools.cache
def _executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="knowledge-embed")


def _local_vector_leg(
    *, entry: Any, org: Any, text: str, model: str, limit: int, allowed: set[uuid.UUID] | None
) -> list[tuple[uuid.UUID, float]]:
    """Embed the query with the local model and rank ``entry`` by it (no database access)."""
    from knowledge.embeddings import embed_query

    query_vector = embed_query(org=org, text=text, backend="local", model=model)
    return [] if query_vector is None else rank_vectors(entry, query_vector, limit, allowed)


def run_search(
    *, kb: KnowledgeBase, query: str, top_k: int = 10, mode: str = "hybrid", filters: dict | None = None
) -> SearchResult:
    """Search ``kb``; see the module docstring. ``kb`` is re-read so a switched index is seen at once."""
    if mode not in MODES:
        raise ValidationError(f"mode must be one of {', '.join(MODES)}.", code="ERR_BAD_MODE")
    query = (query or "").strip()
    if not query:
        raise ValidationError("query must not be empty.", code="ERR_EMPTY_QUERY")
    top_k = max(1, min(int(top_k), MAX_TOP_K))
    # One query for the KB, its org (the query embedding's) and its serving index, whose
    # ``revision`` is all the vector cache needs to know it is current.
    kb = KnowledgeBase.objects.select_related("org", "active_index").get(pk=kb.pk)
    allowed = _allowed_documents(kb, filters)
    pool = max(top_k * 5, 50) if mode == "hybrid" else top_k
    notes: list[str] = []
    index = _serving_index(kb) if mode in ("hybrid", "vector") else None
    if mode == "vector" and index is None:
        raise NoVectorIndex()

    # A local model embeds the query and ranks the cached vectors in a thread while the database
    # ranks by keyword: that leg touches no database (the matrix is fetched here first: a test's
    # transaction, or a new row, is only visible to this thread's connection), and torch, numpy
    # and the database driver release the GIL, so hybrid costs max(), not the sum, of the two.
    pending: Future | None = None
    entry = None
    if index is not None and index.backend == "local":
        entry = matrix_for(index)
        pending = _executor().submit(
            _local_vector_leg, entry=entry, org=kb.org, text=query, model=index.model, limit=pool,
            allowed=allowed,
        )  # fmt: skip
    keyword: list[tuple[uuid.UUID, float]] = []
    if mode in ("hybrid", "keyword"):
        keyword = keyword_search(
            kb_id=kb.pk, language=kb.language, query=query, limit=pool, document_ids=allowed
        )
    vector: list[tuple[uuid.UUID, float]] = []
    if index is not None:
        from knowledge.embeddings import embed_query

        try:
            if pending is not None:
                vector = pending.result()
            else:
                query_vector = embed_query(org=kb.org, text=query, backend=index.backend, model=index.model)
                if query_vector is not None:
                    vector = vector_search(
                        index=index, query_vector=query_vector, limit=pool, document_ids=allowed
                    )
        except Exception as exc:
            if mode == "vector":
                raise
            logger.warning("query embedding failed for kb %s: %s", kb.pk, exc)
            notes.append(
                f"The query could not be embedded ({getattr(exc, 'code', type(exc).__name__)}); keyword only."
            )
            vector = []
    elif mode == "hybrid":
        notes.append("No vector index is serving: keyword search only.")

    if mode == "keyword" or (mode == "hybrid" and index is None):
        mode_used = "keyword"
        fused = [(cid, score, [rank, None]) for rank, (cid, score) in enumerate(keyword[:top_k], start=1)]
    elif mode == "vector":
        mode_used = "vector"
        fused = [(cid, score, [None, rank]) for rank, (cid, score) in enumerate(vector[:top_k], start=1)]
    else:
        mode_used = "hybrid" if vector else "keyword"
        fused = rrf(
            [
                (keyword, settings.KNOWLEDGE_RRF_KEYWORD_WEIGHT),
                (vector, settings.KNOWLEDGE_RRF_VECTOR_WEIGHT),
            ],
            k=settings.KNOWLEDGE_RRF_K,
        )[:top_k]

    keyword_scores, vector_scores = dict(keyword), dict(vector)
    # By primary key alone: with ``kb=`` in the WHERE clause SQLite walks the KB's index (every chunk
    # of a 100k-chunk KB, ~40 ms) instead of looking the few ids up; the KB is checked here instead.
    rows = {
        row.pk: row
        for row in Chunk.objects.filter(pk__in=[item[0] for item in fused])
        .select_related("document")
        .defer("document__text")  # a hit needs its document's title, not its whole text
        if row.kb_id == kb.pk
    }
    terms = query_terms(query)
    hits = []
    for chunk_id, score, (keyword_rank, vector_rank) in fused:
        row = rows.get(chunk_id)
        if row is None:
            continue  # deleted between ranking and reading
        hits.append(
            SearchHit(
                document_id=row.document_id,
                chunk_id=row.pk,
                score=round(float(score), 6),
                text=row.text,
                snippet=highlight(row.text, terms),
                page=row.page,
                metadata={**(row.document.metadata or {}), **(row.metadata or {})},
                title=row.document.title,
                section=row.section,
                seq=row.seq,
                keyword_rank=keyword_rank,
                vector_rank=vector_rank,
                keyword_score=keyword_scores.get(chunk_id),
                vector_score=vector_scores.get(chunk_id),
            )
        )
    return SearchResult(
        hits=hits, mode=mode, mode_used=mode_used, index_version=index.pk if index else None, notes=notes
    )


def search(
    *, kb: KnowledgeBase, query: str, top_k: int = 10, mode: str = "hybrid", filters: dict | None = None
) -> list[SearchHit]:
    """The ranked hits of ``query`` in ``kb`` (best first)."""
    return run_search(kb=kb, query=query, top_k=top_k, mode=mode, filters=filters).hits


async def asearch(
    *, kb: KnowledgeBase, query: str, top_k: int = 10, mode: str = "hybrid", filters: dict | None = None
) -> list[SearchHit]:
    """``search`` for async callers (runs in a thread: the ORM and numpy work are blocking)."""
    return await sync_to_async(search, thread_sensitive=True)(
        kb=kb, query=query, top_k=top_k, mode=mode, filters=filters
    )
