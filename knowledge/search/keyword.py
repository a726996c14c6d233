"""The keyword side of search, on the database's own full-text index (created by migration 0001).

- PostgreSQL: ``knowledge_chunk.tsv`` (tsvector in the KB's language, GIN-indexed). The query's
  lexemes are OR-ed (``plainto_tsquery`` ANDs them, which finds nothing for a natural-language
  question) and matches are ranked with ``ts_rank_cd`` normalised by document length.
- SQLite: the FTS5 table ``knowledge_chunk_fts`` (porter stemmer), ranked by its built-in BM25.

Both return ``[(chunk_id, score)]`` best first, scores higher-is-better.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable

from django.db import connection

# Words that match nearly every chunk: dropped from SQLite queries (PostgreSQL's configs drop
# their own), which keeps FTS5 from scoring the whole table for "the".
STOP_WORDS = frozenset(
    "a an and are as at be but by for from has have in is it its of on or that the their there these this "
    "to was were what when where which who why will with does do did how not no can".split()
)
_WORD = re.compile(r"\w+", re.UNICODE)

# Full-text configurations a KB may name (PostgreSQL ships these; SQLite stems English only).
LANGUAGES = (
    "simple", "arabic", "danish", "dutch", "english", "finnish", "french", "german", "greek", "hungarian",
    "indonesian", "irish", "italian", "lithuanian", "nepali", "norwegian", "portuguese", "romanian",
    "russian", "spanish", "swedish", "tamil", "turkish",
)  # fmt: skip


OVERFETCH = 20  # SQLite: global FTS5 matches ranked per chunk wanted, before the KB filter


def query_terms(query: str) -> list[str]:
    """The words of a query worth matching, lower-cased, in order, without duplicates."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(query.lower()):
        if word not in STOP_WORDS and (len(word) > 1 or word.isdigit()):
            seen.setdefault(word, None)
    return list(seen)


def _db_uuid(value: uuid.UUID | str) -> object:
    value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value.hex if connection.vendor == "sqlite" else value


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# PostgreSQL: a term (lexeme) found in more chunks of the KB than this still scores, but does not
# select candidates on its own: ``ts_rank_cd`` reads the tsvector of every candidate (~10 µs a row),
# so an OR with a word in half of a 100k-chunk KB cost ~0.6 s. Chunks holding only such words
# rank low anyway (they share nothing rare with the query).
COMMON_CHUNKS = 2000
_DF_TTL_SECONDS = 300.0
_DF_CACHE_SIZE = 4096
_df_cache: OrderedDict[tuple[str, str, str], tuple[float, int]] = OrderedDict()
_df_lock = threading.Lock()  # the cache of document frequencies of both databases


def _informative_terms(cursor, terms: list[str]) -> list[str]:
    """Drop terms found in more than half of all chunks (keeping the rarest one at least).

    FTS5's BM25 gives such a term an IDF of ~0 (it clamps negative IDFs to 1e-6), so it adds nothing
    to a score, but OR-ing it in makes FTS5 score every chunk that holds it: the ranking is the
    same without it, and a query of common words stops costing a scan of the table.
    """
    if len(terms) < 2:
        return terms
    cursor.execute("SELECT max(rowid) FROM knowledge_chunk_fts")
    total = cursor.fetchone()[0] or 0
    half = total // 2
    if half < 1000:  # small tables are cheap to scan whole
        return terms
    frequency = {}
    now = time.monotonic()
    for term in terms:
        key = ("sqlite", term, str(half))  # the counts are capped at half the table: keyed by it
        with _df_lock:
            cached = _df_cache.get(key)
        if cached is not None and now - cached[0] < _DF_TTL_SECONDS:
            frequency[term] = cached[1]
            continue
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM knowledge_chunk_fts "
            "WHERE knowledge_chunk_fts MATCH %s LIMIT %s)",
            ['"' + term.replace('"', "") + '"', half + 1],
        )
        frequency[term] = cursor.fetchone()[0]
        _remember(key, now, frequency[term])
    kept = [term for term in terms if frequency[term] <= half]
    return kept or [min(terms, key=frequency.__getitem__)]


def _pg_document_frequency(cursor, kb_id: uuid.UUID, lexemes: list[str]) -> dict[str, int]:
    """Chunks of the KB matching each tsquery, counted up to ``COMMON_CHUNKS + 1`` (cached a while:
    frequencies move slowly, and a query of common words would otherwise count them every time)."""
    now = time.monotonic()
    found: dict[str, int] = {}
    with _df_lock:
        for lexeme in lexemes:
            cached = _df_cache.get((str(kb_id), lexeme, ""))
            if cached is not None and now - cached[0] < _DF_TTL_SECONDS:
                found[lexeme] = cached[1]
    for lexeme in lexemes:
        if lexeme in found:
            continue
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM knowledge_chunk WHERE kb_id = %s AND tsv @@ %s::tsquery "
            "LIMIT %s) AS matches",
            [kb_id, lexeme, COMMON_CHUNKS + 1],
        )
        found[lexeme] = cursor.fetchone()[0]
        _remember((str(kb_id), lexeme, ""), now, found[lexeme])
    return found


def _remember(key: tuple[str, str, str], at: float, count: int) -> None:
    with _df_lock:
        _df_cache[key] = (at, count)
        _df_cache.move_to_end(key)
        while len(_df_cache) > _DF_CACHE_SIZE:
            _df_cache.popitem(last=False)


def _pg_search(
    cursor, kb_id: uuid.UUID, config: str, terms: list[str], limit: int, doc_clause: str, doc_params: list
) -> list[tuple[uuid.UUID, float]]:
    """Rank by ``ts_rank_cd`` over every query lexeme, among the chunks that hold a rare one.

    The lexemes come from ``plainto_tsquery`` per word (stemmed, stop words dropped). Candidates are
    the chunks matching any lexeme found in at most ``COMMON_CHUNKS`` chunks; when every lexeme is
    common, the chunks holding all of them; when those are fewer than ``limit``, every match (the
    plain OR, exact but slow on a big KB).
    """
    cursor.execute(
        "SELECT plainto_tsquery(%s::regconfig, word)::text FROM unnest(%s::text[]) AS word",
        [config, terms],
    )
    lexemes = list(dict.fromkeys(row[0] for row in cursor.fetchall() if row[0]))
    if not lexemes:
        return []
    scoring = " | ".join(f"({lexeme})" for lexeme in lexemes)
    candidates = [scoring]
    if len(lexemes) > 1:
        frequency = _pg_document_frequency(cursor, kb_id, lexemes)
        rare = [lexeme for lexeme in lexemes if frequency[lexeme] <= COMMON_CHUNKS]
        narrow = " | ".join(f"({lexeme})" for lexeme in rare) if rare else " & ".join(lexemes)
        candidates.insert(0, narrow)
    sql = (  # noqa: S608 - the SQL is a constant with placeholders
        "SELECT c.id, ts_rank_cd(c.tsv, %s::tsquery, 1) AS score FROM knowledge_chunk c "
        "WHERE c.kb_id = %s AND c.tsv @@ %s::tsquery{docs} ORDER BY score DESC, c.id LIMIT %s"
    ).replace("{docs}", doc_clause)  # only placeholders go in
    rows: list = []
    for position, candidate in enumerate(candidates):
        cursor.execute(sql, [scoring, kb_id, candidate, *doc_params, limit])
        rows = cursor.fetchall()
        if len(rows) >= limit or position == len(candidates) - 1:
            break
        # Too few among the narrow candidates: widen to every match (exact) only if that adds rows.
    return [(_as_uuid(row[0]), float(row[1])) for row in rows]


def keyword_search(
    *,
    kb_id: uuid.UUID,
    language: str,
    query: str,
    limit: int,
    document_ids: Iterable[uuid.UUID] | None = None,
) -> list[tuple[uuid.UUID, float]]:
    """Chunks of the KB matching ``query``, best first, at most ``limit``."""
    terms = query_terms(query)
    if not terms or limit <= 0:
        return []
    doc_clause, doc_params = "", []
    if document_ids is not None:
        ids = [_db_uuid(d) for d in document_ids]
        if not ids:
            return []
        doc_clause = f" AND c.document_id IN ({', '.join(['%s'] * len(ids))})"
        doc_params = ids
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            config = language if language in LANGUAGES else "simple"
            return _pg_search(cursor, kb_id, config, terms, limit, doc_clause, doc_params)
        if connection.vendor == "sqlite":
            terms = _informative_terms(cursor, terms)
            match = " OR ".join('"' + term.replace('"', "") + '"' for term in terms)
            # Fast path: FTS5 ranks its matches alone (no join per match), then the KB filter runs on
            # the global top ``cap``. Exact when the KB filled ``limit`` from them (its rows further
            # down rank below every row kept) or when ``cap`` held every match; else the full join.
            cap = max(limit * OVERFETCH, 200)
            fast = (  # noqa: S608 - the SQL is a constant with placeholders
                "SELECT c.id, f.rank FROM (SELECT rowid, rank FROM knowledge_chunk_fts "
                "WHERE knowledge_chunk_fts MATCH %s ORDER BY rank LIMIT %s) AS f "
                "JOIN knowledge_chunk c ON c.rowid = f.rowid "
                "WHERE c.kb_id = %s{docs} ORDER BY f.rank LIMIT %s"
            ).replace("{docs}", doc_clause)  # only placeholders go in
            cursor.execute(fast, [match, cap, _db_uuid(kb_id), *doc_params, limit])
            rows = cursor.fetchall()
            if len(rows) < limit:
                cursor.execute(
                    "SELECT count(*) FROM (SELECT rowid FROM knowledge_chunk_fts WHERE knowledge_chunk_fts "
                    "MATCH %s LIMIT %s)",
                    [match, cap + 1],
                )
                if cursor.fetchone()[0] > cap:
                    full = (  # noqa: S608 - the SQL is a constant with placeholders
                        "SELECT c.id, bm25(knowledge_chunk_fts) AS rank FROM knowledge_chunk_fts "
                        "JOIN knowledge_chunk c ON c.rowid = knowledge_chunk_fts.rowid "
                        "WHERE knowledge_chunk_fts MATCH %s AND c.kb_id = %s{docs} ORDER BY rank LIMIT %s"
                    ).replace("{docs}", doc_clause)
                    cursor.execute(full, [match, _db_uuid(kb_id), *doc_params, limit])
                    rows = cursor.fetchall()
            return [(_as_uuid(row[0]), -float(row[1])) for row in rows]
    # Another database: a plain substring match, unranked beyond the number of terms found.
    from knowledge.models import Chunk

    rows = Chunk.objects.filter(kb_id=kb_id)
    if document_ids is not None:
        rows = rows.filter(document_id__in=list(document_ids))
    scored = []
    for chunk_id, text in rows.values_list("id", "text").iterator():
        lowered = text.lower()
        hits = sum(1 for term in terms if term in lowered)
        if hits:
            scored.append((chunk_id, float(hits)))
    scored.sort(key=lambda item: -item[1])
    return scored[:limit]


_TSV_UPDATE = (
    "UPDATE knowledge_chunk SET tsv = to_tsvector(%s::regconfig, coalesce(section, '') || ' ' || text) "
)


def index_chunks(*, document_id: uuid.UUID, language: str) -> None:
    """Fill the full-text column of a document's chunks (PostgreSQL; SQLite's triggers do it)."""
    if connection.vendor != "postgresql":
        return
    config = language if language in LANGUAGES else "simple"
    with connection.cursor() as cursor:
        cursor.execute(
            _TSV_UPDATE + "WHERE document_id = %s",
            [config, document_id],
        )


def reindex_kb(*, kb_id: uuid.UUID, language: str) -> None:
    """Refill the full-text column of every chunk of a KB (its language changed)."""
    if connection.vendor != "postgresql":
        return
    config = language if language in LANGUAGES else "simple"
    with connection.cursor() as cursor:
        cursor.execute(
            _TSV_UPDATE + "WHERE kb_id = %s",
            [config, kb_id],
        )
