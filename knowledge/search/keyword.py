"""The keyword side of search, on the database's own full-text index (created by migration 0001).

- PostgreSQL: ``knowledge_chunk.tsv`` (tsvector in the KB's language, GIN-indexed) and
  ``tsv_length`` (its token count). The query's lexemes are OR-ed (``plainto_tsquery`` ANDs them,
  which finds nothing for a natural-language question) and matches are ranked by BM25 computed in
  SQL, with per-KB document frequencies cached a while (``_pg_search``).
- SQLite: the FTS5 table ``knowledge_chunk_fts`` (porter stemmer), ranked by its built-in BM25.

Both return ``[(chunk_id, score)]`` best first, scores higher-is-better.
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

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


_DF_TTL_SECONDS = 300.0
_DF_CACHE_SIZE = 4096
# Term counts of both databases and PostgreSQL's per-KB statistics: (scope, term, kind) -> (at, value).
_df_cache: OrderedDict[tuple[str, str, str], tuple[float, Any]] = OrderedDict()
_df_lock = threading.Lock()
# PostgreSQL: bumped when this process (re)indexes a KB's chunks, so its cached statistics are not
# read again here; other processes see the change when their entries expire (``_DF_TTL_SECONDS``).
_kb_generation: dict[str, int] = {}

# SQLite: below this many chunks FTS5 scores every match fast enough; above it a term found in more
# than ``SQLITE_COMMON_SHARE`` of the chunks is left out of the query (see ``_informative_terms``).
SQLITE_BIG_TABLE = 20_000
SQLITE_COMMON_SHARE = 0.05


def _cached(key: tuple[str, str, str], now: float) -> Any:
    with _df_lock:
        cached = _df_cache.get(key)
    return cached[1] if cached is not None and now - cached[0] < _DF_TTL_SECONDS else None


def _remember(key: tuple[str, str, str], at: float, value: Any) -> None:
    with _df_lock:
        _df_cache[key] = (at, value)
        _df_cache.move_to_end(key)
        while len(_df_cache) > _DF_CACHE_SIZE:
            _df_cache.popitem(last=False)


def _informative_terms(cursor, terms: list[str]) -> list[str]:
    """Drop the terms too common to be worth their cost (keeping the rarest one at least).

    A term in more than half of all chunks gets an IDF of ~0 from FTS5's BM25 (it clamps negative
    IDFs to 1e-6), so it adds nothing to a score, but OR-ing it in makes FTS5 score every chunk that
    holds it. Past ``SQLITE_BIG_TABLE`` chunks, terms in more than ``SQLITE_COMMON_SHARE`` of them
    go too: their IDF is small (< 3 against ~10 for a rare term), the chunks they would add rank
    below those sharing a rarer term, and scoring them is what made a query cost ~100 ms.
    """
    if len(terms) < 2:
        return terms
    cursor.execute("SELECT max(rowid) FROM knowledge_chunk_fts")
    total = cursor.fetchone()[0] or 0
    cap = int(total * SQLITE_COMMON_SHARE) if total > SQLITE_BIG_TABLE else total // 2
    if total < 2000:  # small tables are cheap to scan whole
        return terms
    frequency = {}
    now = time.monotonic()
    for term in terms:
        key = ("sqlite", term, str(cap))  # the counts are capped: keyed by the cap
        cached = _cached(key, now)
        if cached is not None:
            frequency[term] = cached
            continue
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM knowledge_chunk_fts "
            "WHERE knowledge_chunk_fts MATCH %s LIMIT %s)",
            ['"' + term.replace('"', "") + '"', cap + 1],
        )
        frequency[term] = cursor.fetchone()[0]
        _remember(key, now, frequency[term])
    kept = [term for term in terms if frequency[term] <= cap]
    return kept or [min(terms, key=frequency.__getitem__)]


# PostgreSQL BM25. ``k1`` and ``b`` are the usual (Lucene's, FTS5's) values.
BM25_K1 = 1.2
BM25_B = 0.75
# A lexeme's chunks are counted exactly up to this many; past it the count is estimated from the
# first ``DF_SAMPLE`` chunks of the KB (counting every match of "cell" in a 100k-chunk KB on a
# query's first use costs more than the whole search may).
COMMON_CHUNKS = 1000
DF_SAMPLE = 2000
# At most this many candidates are scored per query (reading and unnesting each tsvector costs a
# few µs). Candidates are the chunks holding the query's rarest lexemes, as many of those lexemes
# as their counts fit in this bound: a chunk holding only commoner ones scores below them unless
# it holds several, which is where the bound trades a little exactness for time.
RANKED_CANDIDATES = 2000


def tsquery_of(lexemes: Iterable[str]) -> str:
    """The tsquery text OR-ing ``lexemes`` verbatim (already normalised: cast, never parsed again)."""
    return " | ".join("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)


def _pg_statistics(cursor, kb_id: uuid.UUID, lexemes: list[str]) -> tuple[int, float, dict[str, int]]:
    """The KB's chunk count, average chunk length (tokens) and each lexeme's document frequency.

    Cached a while per KB (they move slowly): a query of new lexemes costs one round trip for the
    exact counts (each capped at ``COMMON_CHUNKS + 1``); the KB's first query reads the chunk count
    and a ``DF_SAMPLE``-chunk sample, whose lexeme counts estimate those over the cap.
    """
    scope = f"{kb_id}:{_kb_generation.get(str(kb_id), 0)}"
    now = time.monotonic()
    stats = _cached((scope, "", "stats"), now)
    found: dict[str, int] = {}
    for lexeme in lexemes:
        cached = _cached((scope, lexeme, "df"), now)
        if cached is not None:
            found[lexeme] = cached
    missing = [lexeme for lexeme in lexemes if lexeme not in found]
    if missing:
        # One statement, one subquery per lexeme: the planner sees each (a correlated subquery over
        # the list would hide it, and the plan could walk the whole KB instead of the GIN index).
        union = " UNION ALL ".join(
            f"SELECT {position}, count(*) FROM (SELECT 1 FROM knowledge_chunk "  # noqa: S608 - placeholders
            "WHERE kb_id = %s AND tsv @@ %s::tsquery LIMIT %s) AS m"
            for position in range(len(missing))
        )
        params: list = []
        for lexeme in missing:
            params += [kb_id, tsquery_of([lexeme]), COMMON_CHUNKS + 1]
        cursor.execute(union, params)
        counts = dict(cursor.fetchall())
        exact = {lexeme: int(counts[position]) for position, lexeme in enumerate(missing)}
    else:
        exact = {}
    if stats is None:
        # The chunk count, and a sample's average length and lexeme counts (one read of
        # ``DF_SAMPLE`` tsvectors per KB while cached, instead of one per common lexeme).
        cursor.execute(
            "SELECT (SELECT count(*) FROM knowledge_chunk WHERE kb_id = %s), tsv_length, "
            "tsvector_to_array(tsv) FROM knowledge_chunk WHERE kb_id = %s AND tsv IS NOT NULL LIMIT %s",
            [kb_id, kb_id, DF_SAMPLE],
        )
        rows = cursor.fetchall()
        sample: Counter[str] = Counter()
        for _total, _length, array in rows:
            sample.update(array)
        average = sum(row[1] or 0 for row in rows) / len(rows) if rows else 0.0
        stats = (int(rows[0][0]) if rows else 0, average, len(rows), sample)
        _remember((scope, "", "stats"), now, stats)
    total, average, sampled, sample = stats
    for lexeme, count in exact.items():
        if count > COMMON_CHUNKS:  # over the cap: estimated from the sample, never below the cap
            estimate = round(sample.get(lexeme, 0) / sampled * total) if sampled else 0
            exact[lexeme] = max(COMMON_CHUNKS + 1, min(total, estimate))
    for lexeme, count in exact.items():
        found[lexeme] = count
        _remember((scope, lexeme, "df"), now, count)
    return max(total, 1), max(average, 1.0), found


# ``k1 * (1 - b + b * length / average)`` is passed as ``%s + %s * length``. ``{skip}`` leaves out
# the chunks an earlier, narrower pass has scored already.
_PG_BM25 = (  # noqa: S608 - the SQL is a constant with placeholders
    "WITH candidates AS MATERIALIZED (SELECT c.id, c.tsv, c.tsv_length FROM knowledge_chunk c "
    "WHERE c.kb_id = %s AND c.tsv @@ %s::tsquery{skip}{docs} LIMIT %s), "
    "q AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS q(lexeme, idf)) "
    "SELECT c.id, sum(q.idf * t.tf * %s / (t.tf + %s + %s * coalesce(c.tsv_length, %s))) AS score "
    "FROM candidates c CROSS JOIN LATERAL (SELECT u.lexeme, coalesce(cardinality(u.positions), 1) AS tf "
    "FROM unnest(ts_filter(setweight(c.tsv, 'A', %s::text[]), '{a}')) AS u) AS t "
    "JOIN q ON q.lexeme = t.lexeme GROUP BY c.id ORDER BY score DESC, c.id LIMIT %s"
)


def _pg_search(
    cursor, kb_id: uuid.UUID, config: str, terms: list[str], limit: int, doc_clause: str, doc_params: list
) -> list[tuple[uuid.UUID, float]]:
    """Rank by BM25 over every query lexeme, among the chunks holding the rarest ones.

    The lexemes are the query's words through the KB's text search configuration (stemmed, stop
    words dropped). Each scores ``idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / average))``
    with ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``tf`` its positions in the chunk's
    tsvector and ``length`` the chunk's ``tsv_length``. Candidates (GIN-selected) are the chunks
    holding any of the rarest lexemes whose counts add up to at most ``RANKED_CANDIDATES``
    (the rarest one at least); when those are fewer than ``limit``, up to ``RANKED_CANDIDATES``
    more holding the other lexemes are scored too.
    """
    cursor.execute(
        "SELECT DISTINCT lexeme FROM unnest(to_tsvector(%s::regconfig, %s)) ORDER BY lexeme",
        [config, " ".join(terms)],
    )
    lexemes = [row[0] for row in cursor.fetchall() if row[0]]
    if not lexemes:
        return []
    total, average, frequency = _pg_statistics(cursor, kb_id, lexemes)
    idf = [math.log(1 + (total - min(frequency[x], total) + 0.5) / (frequency[x] + 0.5)) for x in lexemes]
    by_rarity = sorted(lexemes, key=lambda lexeme: (frequency[lexeme], lexeme))
    narrow, covered = [by_rarity[0]], frequency[by_rarity[0]]
    for lexeme in by_rarity[1:]:
        covered += frequency[lexeme]
        if covered > RANKED_CANDIDATES:
            break
        narrow.append(lexeme)
    length_factor = BM25_K1 * BM25_B / average
    scoring = [lexemes, idf, BM25_K1 + 1, BM25_K1 * (1 - BM25_B), length_factor, average, lexemes, limit]
    sql = _PG_BM25.replace("{docs}", doc_clause)  # only placeholders go in
    cursor.execute(
        sql.replace("{skip}", ""),
        [kb_id, tsquery_of(narrow), *doc_params, RANKED_CANDIDATES, *scoring],
    )
    rows = cursor.fetchall()
    if len(rows) < limit and len(narrow) < len(lexemes):
        # Too few chunks hold the rarest lexemes: score (a bounded number of) those holding the others.
        cursor.execute(
            sql.replace("{skip}", " AND NOT c.tsv @@ %s::tsquery"),
            [
                kb_id, tsquery_of(lexeme for lexeme in lexemes if lexeme not in narrow),
                tsquery_of(narrow), *doc_params, RANKED_CANDIDATES, *scoring,
            ],
        )  # fmt: skip
        rows = sorted(rows + cursor.fetchall(), key=lambda row: (-row[1], row[0]))[:limit]
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


# The tsvector of each chunk and its token count (BM25's length; as migration 0002 backfills it).
_TSV_UPDATE = (
    "UPDATE knowledge_chunk AS c SET tsv = v.tsv, tsv_length = (SELECT coalesce(sum(coalesce("
    "cardinality(t.positions), 1)), 0) FROM unnest(v.tsv) AS t) FROM (SELECT id, to_tsvector(%s::regconfig, "
    "coalesce(section, '') || ' ' || text) AS tsv FROM knowledge_chunk WHERE {column} = %s) AS v "
    "WHERE c.id = v.id RETURNING c.kb_id"
)


def _forget_statistics(kb_ids: Iterable[object]) -> None:
    with _df_lock:
        for kb_id in {str(_as_uuid(value)) for value in kb_ids}:
            _kb_generation[kb_id] = _kb_generation.get(kb_id, 0) + 1


def index_chunks(*, document_ids: Iterable[uuid.UUID], language: str) -> None:
    """Fill the full-text columns of the documents' chunks (PostgreSQL; SQLite's triggers do it);
    a bulk ingestion's batch in one statement."""
    if connection.vendor != "postgresql":
        return
    ids = [_as_uuid(value) for value in document_ids]
    if not ids:
        return
    config = language if language in LANGUAGES else "simple"
    with connection.cursor() as cursor:
        cursor.execute(_TSV_UPDATE.replace("{column} = %s", "document_id = ANY(%s)"), [config, ids])
        _forget_statistics(row[0] for row in cursor.fetchall())


def reindex_kb(*, kb_id: uuid.UUID, language: str) -> None:
    """Refill the full-text columns of every chunk of a KB (its language changed)."""
    if connection.vendor != "postgresql":
        return
    config = language if language in LANGUAGES else "simple"
    with connection.cursor() as cursor:
        cursor.execute(_TSV_UPDATE.replace("{column}", "kb_id"), [config, kb_id])
    _forget_statistics([kb_id])
