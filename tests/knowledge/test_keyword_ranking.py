"""Keyword ranking: BM25 on both databases (PostgreSQL computes it in SQL from ``tsv`` and
``tsv_length``; SQLite's FTS5 has its own), the statistics PostgreSQL caches for it, migration
0002's backfill, and the terms SQLite leaves out of queries on a big table."""

from __future__ import annotations

import importlib

import pytest
from django.db import connection

from knowledge.search import keyword, run_search
from knowledge.search.vector import matrix_for
from knowledge.services.documents import document_create_from_text

from .conftest import run_pending_jobs

postgres_only = pytest.mark.skipif("connection.vendor != 'postgresql'", reason="PostgreSQL full-text only")


@pytest.fixture(autouse=True)
def _fresh_term_counts():
    keyword._df_cache.clear()
    yield
    keyword._df_cache.clear()


def _fill(kb, owner, docs: dict[str, str]) -> dict:
    made = {
        title: document_create_from_text(kb=kb, actor=owner, title=title, text=text)
        for title, text in docs.items()
    }
    run_pending_jobs()
    return made


def _titles(kb, query: str, top_k: int = 10) -> list[str]:
    return [hit.title for hit in run_search(kb=kb, query=query, mode="keyword", top_k=top_k).hits]


def test_a_rare_term_outranks_a_common_one(kb, owner):
    docs = {f"Otters {n}": f"Otters float on their backs, number {n}." for n in range(8)}
    docs["Common"] = "Otters, otters and more otters crowd the bay at dusk."
    docs["Rare"] = "A forest of kelp sways beneath the waves at dusk."
    _fill(kb, owner, docs)
    # "otters" is in 9 chunks of 10 and thrice in one; "kelp" once: its rarity wins.
    assert _titles(kb, "otters kelp")[0] == "Rare"


def test_shorter_chunks_rank_first_for_the_same_matches(kb, owner):
    filler = " ".join(f"word{n}" for n in range(60))
    _fill(
        kb,
        owner,
        {
            "Long": f"Sea otters eat urchins. {filler}",
            "Short": "Sea otters eat urchins.",
            "Other": "Beavers build dams from branches.",
        },
    )
    assert _titles(kb, "urchins") == ["Short", "Long"]


def test_more_occurrences_rank_higher_but_saturate(kb, owner):
    _fill(
        kb,
        owner,
        {
            "Once": "Kelp grows fast in cold water near the rocky coast of the island.",
            "Thrice": "Kelp, kelp and kelp grows fast in cold water near the rocky coast.",
            "None": "Urchins graze the rocky bottom of the cold bay near the island.",
        },
    )
    hits = run_search(kb=kb, query="kelp", mode="keyword").hits
    assert [hit.title for hit in hits] == ["Thrice", "Once"]
    assert hits[0].keyword_score < 3 * hits[1].keyword_score  # BM25's tf saturates (k1)


@postgres_only
def test_postgres_scores_are_bm25_from_idf_tf_and_length(kb, owner):
    _fill(kb, owner, {"A": "Otters eat kelp.", "B": "Otters sleep.", "C": "Beavers sleep."})
    hits = run_search(kb=kb, query="kelp", mode="keyword").hits
    assert [hit.title for hit in hits] == ["A"]
    # N = 3 chunks, df(kelp) = 1, tf = 1; length 3 tokens ("otter", "eat", "kelp"), average 7/3.
    import math

    idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    norm = 1.2 * (1 - 0.75 + 0.75 * 3 / (7 / 3))
    assert hits[0].keyword_score == pytest.approx(idf * 2.2 / (1 + norm), rel=1e-6)


@postgres_only
def test_postgres_chunks_store_their_token_length(kb, owner):
    _fill(kb, owner, {"Otters": "Sea otters hold hands while they sleep in the kelp."})
    with connection.cursor() as cursor:
        cursor.execute("SELECT tsv_length FROM knowledge_chunk WHERE kb_id = %s", [kb.pk])
        # english drops "while", "they", "in", "the": sea otter hold hand sleep kelp
        assert [row[0] for row in cursor.fetchall()] == [6]


@postgres_only
def test_the_backfill_migration_fills_the_length_of_existing_chunks(kb, owner):
    _fill(kb, owner, {"Otters": "Sea otters hold hands while they sleep in the kelp.", "Kelp": "Kelp kelp."})
    migration = importlib.import_module("knowledge.migrations.0002_chunk_tsv_length")
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no ALTER TABLE with deferred FK checks pending
    with connection.schema_editor() as editor:  # DDL is transactional: the test's rollback undoes it
        migration.backfill_backward(None, editor)
        migration.backfill_forward(None, editor)
    with connection.cursor() as cursor:
        cursor.execute("SELECT text, tsv_length FROM knowledge_chunk WHERE kb_id = %s ORDER BY text", [kb.pk])
        assert cursor.fetchall() == [
            ("Kelp kelp.", 2),
            ("Sea otters hold hands while they sleep in the kelp.", 6),
        ]


@postgres_only
def test_postgres_estimates_common_lexemes_from_a_sample(kb, owner, monkeypatch):
    docs = {f"d{n}": f"Otters float, number {n}." + (" Kelp too." if n % 2 else "") for n in range(20)}
    _fill(kb, owner, docs)
    monkeypatch.setattr(keyword, "COMMON_CHUNKS", 3)  # "otter" (20) and "kelp" (10) are common
    monkeypatch.setattr(keyword, "DF_SAMPLE", 10)
    total, average, frequency = keyword._pg_statistics(connection.cursor(), kb.pk, ["otter", "kelp", "nope"])
    assert total == 20 and average > 2
    assert frequency["otter"] == 20  # every sampled chunk holds it: 10/10 of 20
    assert 4 <= frequency["kelp"] <= 20  # estimated from 10 chunks, never below the exact cap
    assert frequency["nope"] == 0


@postgres_only
def test_postgres_statistics_follow_new_chunks_of_the_kb(kb, owner):
    _fill(kb, owner, {"A": "Otters eat kelp.", "B": "Beavers sleep."})
    first = keyword._pg_statistics(connection.cursor(), kb.pk, ["kelp"])
    assert first[0] == 2 and first[2] == {"kelp": 1}
    _fill(kb, owner, {"C": "Kelp forests.", "D": "More kelp."})
    again = keyword._pg_statistics(connection.cursor(), kb.pk, ["kelp"])
    assert again[0] == 4 and again[2] == {"kelp": 3}  # indexing the KB dropped the cached counts


@postgres_only
def test_postgres_ranks_a_bounded_candidate_set_and_widens_when_it_is_too_small(kb, owner, monkeypatch):
    docs = {f"Otter {n}": f"Otters number {n} float in the bay." for n in range(6)}
    docs["Kelp"] = "Otters sleep wrapped in kelp so the tide does not carry them off."
    _fill(kb, owner, docs)
    monkeypatch.setattr(keyword, "RANKED_CANDIDATES", 3)  # "kelp" (1 chunk) fits, "otter" (7) does not
    assert _titles(kb, "otters kelp", top_k=1) == ["Kelp"]
    wide = _titles(kb, "otters kelp", top_k=5)  # 1 chunk holds kelp < 5: (3 of) the otters' too
    assert len(wide) == 4 and wide[0] == "Kelp"


@postgres_only
def test_postgres_query_lexemes_with_quotes_and_backslashes_are_safe(kb, owner):
    _fill(kb, owner, {"Odd": "O'Brien wrote a\\b about otters."})
    assert _titles(kb, "o'brien a\\b otters") == ["Odd"]


def test_sqlite_drops_terms_in_over_5_percent_of_chunks_only_past_20k_chunks():
    class Cursor:
        def __init__(self, total: int, counts: dict[str, int]):
            self.total, self.counts, self.answers = total, counts, []

        def execute(self, sql, params=()):
            if "max(rowid)" in sql:
                self.answers.append((self.total,))
            else:
                self.answers.append((min(self.counts[params[0].strip('"')], params[1]),))

        def fetchone(self):
            return self.answers.pop(0)

    counts = {"otters": 3_000, "kelp": 40, "bay": 1_500}
    # 19,000 chunks: only terms in over half of them go (none here).
    assert keyword._informative_terms(Cursor(19_000, counts), ["otters", "kelp", "bay"]) == [
        "otters",
        "kelp",
        "bay",
    ]
    keyword._df_cache.clear()
    # 40,000 chunks: "otters" is in 7.5% of them, "bay" in 3.75%.
    assert keyword._informative_terms(Cursor(40_000, counts), ["otters", "kelp", "bay"]) == ["kelp", "bay"]
    keyword._df_cache.clear()
    assert keyword._informative_terms(Cursor(40_000, counts), ["otters"]) == ["otters"]
    assert keyword._informative_terms(
        Cursor(40_000, {"otters": 9_000, "the": 30_000}), ["otters", "the"]
    ) == ["otters"]


def test_a_current_vector_cache_costs_no_query(vector_kb, owner, django_assert_num_queries):
    _fill(vector_kb, owner, {"Otters": "Sea otters hold hands.", "Kelp": "Kelp forests sway."})
    vector_kb.refresh_from_db()
    index = vector_kb.active_index
    loaded = matrix_for(index)
    assert loaded.matrix.shape[0] == 2
    with django_assert_num_queries(0):
        assert matrix_for(index) is loaded


def test_a_search_reads_the_kb_its_org_and_its_index_in_one_query(vector_kb, owner):
    from django.test.utils import CaptureQueriesContext

    _fill(vector_kb, owner, {"Otters": "Sea otters hold hands.", "Kelp": "Kelp forests sway."})
    run_search(kb=vector_kb, query="otters", mode="keyword")
    with CaptureQueriesContext(connection) as captured:
        hits = run_search(kb=vector_kb, query="otters", mode="keyword").hits
    assert hits[0].title == "Otters"
    tables = ("knowledge_knowledgebase", "knowledge_indexversion", "accounts_organization")
    reads = [q["sql"] for q in captured.captured_queries if any(table in q["sql"] for table in tables)]
    assert len(reads) == 1 and all(table in reads[0] for table in tables)
    # Then the keyword ranking (PostgreSQL: lexemes and BM25, the statistics cached by the first
    # search; SQLite: the FTS5 ranking and a count when it found fewer than asked) and the hits.
    assert len(captured.captured_queries) <= 4
