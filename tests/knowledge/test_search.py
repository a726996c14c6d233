"""Search: keyword, vector and hybrid ranking, filters, snippets, the vector cache, and switching
the embedding model without a moment where search fails."""

from __future__ import annotations

import pytest

from core.errors import ValidationError
from knowledge.models import IndexVersion, KnowledgeBase
from knowledge.search import NoVectorIndex, highlight, rrf, run_search, search
from knowledge.services import ingest
from knowledge.services.bases import kb_update
from knowledge.services.documents import document_create_from_text

from .conftest import run_pending_jobs

DOCS = {
    "Otters": "Sea otters hold hands while they sleep so they do not drift apart in the kelp forest.",
    "Beavers": "Beavers build dams from branches and mud, changing the course of rivers and streams.",
    "Volcanoes": "Volcanoes erupt when magma rises through the crust; lava flows cool into basalt rock.",
    "Bread": "Sourdough bread rises slowly because wild yeast ferments the dough over many hours.",
}


def _fill(kb, owner, docs=DOCS, **metadata):
    made = {}
    for title, text in docs.items():
        made[title] = document_create_from_text(
            kb=kb, actor=owner, title=title, text=text, metadata={"topic": title.lower(), **metadata}
        )
    run_pending_jobs()
    return made


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_keyword_and_hybrid_put_the_matching_document_first(kb, owner, mode):
    docs = _fill(kb, owner)
    result = run_search(kb=kb, query="why do otters hold hands when sleeping?", mode=mode)
    assert result.hits[0].document_id == docs["Otters"].pk
    assert result.mode_used == "keyword"  # no vector index: hybrid answers from keywords
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("mode", ["vector", "hybrid", "keyword"])
def test_every_mode_ranks_with_vectors(vector_kb, owner, mode):
    docs = _fill(vector_kb, owner)
    result = run_search(kb=vector_kb, query="magma lava crust", mode=mode, top_k=3)
    assert result.hits[0].document_id == docs["Volcanoes"].pk
    assert result.mode_used == mode
    if mode != "keyword":
        assert result.index_version == vector_kb.active_index_id
        assert result.hits[0].vector_score is not None


def test_hybrid_fuses_both_rankings(vector_kb, owner):
    _fill(vector_kb, owner)
    hit = run_search(kb=vector_kb, query="beavers build dams", mode="hybrid").hits[0]
    assert hit.title == "Beavers"
    assert hit.keyword_rank == 1 and hit.vector_rank == 1


def test_vector_mode_without_an_index_is_a_clear_400(kb, owner):
    _fill(kb, owner)
    with pytest.raises(NoVectorIndex) as caught:
        run_search(kb=kb, query="otters", mode="vector")
    assert caught.value.code == "ERR_NO_VECTOR_INDEX"


def test_results_carry_document_chunk_page_title_and_a_highlighted_snippet(kb, owner):
    docs = _fill(kb, owner)
    (hit,) = search(kb=kb, query="sourdough", top_k=1)
    assert hit.document_id == docs["Bread"].pk and hit.chunk_id
    assert hit.title == "Bread" and hit.metadata["topic"] == "bread"
    assert "<mark>Sourdough</mark>" in hit.snippet


def test_reading_the_hits_leaves_the_documents_whole_text_in_the_database(kb, owner):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _fill(kb, owner)
    with CaptureQueriesContext(connection) as queries:
        (hit,) = search(kb=kb, query="sourdough", top_k=1)

    assert (hit.title, hit.metadata["topic"]) == ("Bread", "bread")  # no query per hit for these
    hits_read = [q["sql"] for q in queries if '"knowledge_chunk"."text"' in q["sql"] and "JOIN" in q["sql"]]
    assert len(hits_read) == 1
    assert '"knowledge_document"."title"' in hits_read[0]
    assert '"knowledge_document"."text"' not in hits_read[0]


def _numpy_blas_threads() -> set[int]:
    """numpy's own BLAS threads (torch sets its MKL's threads itself when the model loads)."""
    from threadpoolctl import threadpool_info

    pools = threadpool_info()
    return {
        pool["num_threads"] for pool in pools if pool["user_api"] == "blas" and "numpy" in pool["filepath"]
    }


@pytest.mark.parametrize("setting", [1, 0])
def test_vector_ranking_runs_on_the_configured_blas_threads(vector_kb, owner, settings, setting):
    from threadpoolctl import threadpool_limits

    from knowledge.search import vector

    _fill(vector_kb, owner)
    search(kb=vector_kb, query="warm up", mode="vector", top_k=1)  # libraries loaded
    settings.KNOWLEDGE_VECTOR_THREADS = setting
    # A known start, restored afterwards: 2 where the library allows it (an OpenBLAS loaded under
    # OPENBLAS_NUM_THREADS=1 stays at 1, whatever is asked later).
    with threadpool_limits(limits=2, user_api="blas"):
        vector._limit_blas_threads.cache_clear()
        try:
            before = _numpy_blas_threads()
            assert search(kb=vector_kb, query="otters sleep", mode="vector", top_k=1)
            after = _numpy_blas_threads()
        finally:
            vector._limit_blas_threads.cache_clear()
    assert after
    assert after == ({1} if setting == 1 else before)  # 0 leaves the library's own count


def test_filters_by_document_and_metadata(kb, owner):
    docs = _fill(kb, owner)
    only = run_search(kb=kb, query="rises", filters={"document_ids": [str(docs["Bread"].pk)]})
    assert {h.document_id for h in only.hits} == {docs["Bread"].pk}
    by_topic = run_search(kb=kb, query="rises", filters={"metadata": {"topic": "volcanoes"}})
    assert {h.document_id for h in by_topic.hits} == {docs["Volcanoes"].pk}
    with pytest.raises(ValidationError):
        run_search(kb=kb, query="rises", filters={"colour": "red"})


def test_empty_query_and_bad_mode_are_refused(kb):
    with pytest.raises(ValidationError):
        run_search(kb=kb, query="  ")
    with pytest.raises(ValidationError):
        run_search(kb=kb, query="x", mode="psychic")


def test_new_chunks_reach_the_vector_cache_without_a_rebuild(vector_kb, owner):
    _fill(vector_kb, owner, {"Otters": DOCS["Otters"]})
    assert run_search(kb=vector_kb, query="otters", mode="vector").hits
    document_create_from_text(
        kb=vector_kb, actor=owner, title="Comets", text="Comets have icy tails of dust."
    )
    run_pending_jobs()
    hits = run_search(kb=vector_kb, query="comets icy tails", mode="vector").hits
    assert hits[0].title == "Comets"


def test_deleted_documents_leave_the_vector_cache(vector_kb, owner):
    from knowledge.services.documents import document_delete

    docs = _fill(vector_kb, owner)
    assert run_search(kb=vector_kb, query="sourdough yeast", mode="vector").hits[0].title == "Bread"
    document_delete(document=docs["Bread"], actor=owner)
    assert all(
        h.title != "Bread" for h in run_search(kb=vector_kb, query="sourdough yeast", mode="vector").hits
    )


def test_switching_the_embedding_model_never_leaves_search_without_answers(vector_kb, owner, monkeypatch):
    _fill(vector_kb, owner)
    old = vector_kb.active_index_id

    kb_update(kb=vector_kb, actor=owner, embedding_model="fake-embed-v2")
    vector_kb.refresh_from_db()
    new = IndexVersion.objects.get(kb=vector_kb, status="building")
    assert vector_kb.active_index_id == old  # still serving the old version

    seen_during_build = []
    real = ingest.embed_chunks

    def embed_and_search(**kwargs):
        # every batch of the build: searches answer, from the old version
        result = run_search(kb=vector_kb, query="magma lava", mode="vector")
        seen_during_build.append((result.index_version, result.hits[0].title))
        return real(**kwargs)

    monkeypatch.setattr(ingest, "embed_chunks", embed_and_search)
    run_pending_jobs()  # the index build job

    assert seen_during_build and all(seen == (old, "Volcanoes") for seen in seen_during_build)
    vector_kb.refresh_from_db()
    assert vector_kb.active_index_id == new.pk
    assert IndexVersion.objects.get(pk=old).status == "retired"
    after = run_search(kb=vector_kb, query="magma lava", mode="vector")
    assert (after.index_version, after.hits[0].title) == (new.pk, "Volcanoes")


def test_a_failing_new_model_keeps_the_old_index_serving(vector_kb, owner):
    _fill(vector_kb, owner)
    old = vector_kb.active_index_id
    kb_update(kb=vector_kb, actor=owner, embedding_model="fail-500")
    run_pending_jobs()
    vector_kb.refresh_from_db()
    assert vector_kb.active_index_id == old
    assert run_search(kb=vector_kb, query="otters", mode="vector").hits


def test_turning_embeddings_off_goes_keyword_only(vector_kb, owner):
    _fill(vector_kb, owner)
    kb_update(kb=vector_kb, actor=owner, embedding_backend="none")
    vector_kb.refresh_from_db()
    assert vector_kb.active_index_id is None and vector_kb.embedding_model == ""
    assert run_search(kb=vector_kb, query="otters", mode="hybrid").mode_used == "keyword"


def test_rrf_weights_and_ranks():
    fused = rrf([([("a", 1.0), ("b", 0.5)], 1.0), ([("b", 0.9), ("c", 0.1)], 1.0)], k=60)
    assert [item for item, _, _ in fused] == ["b", "a", "c"]
    assert fused[0][2] == [2, 1]


def test_highlight_escapes_html():
    snippet = highlight("<b>otters</b> & beavers", ["otters"])
    assert snippet == "&lt;b&gt;<mark>otters</mark>&lt;/b&gt; &amp; beavers"


def test_hidden_kinds_are_searchable_by_their_owners_code(org, owner):
    from knowledge.services.bases import kb_create

    memory = kb_create(org=org, actor=owner, name="mem", kind=KnowledgeBase.Kind.AGENT_MEMORY)
    document_create_from_text(kb=memory, actor=owner, title="fact", text="The launch code is banana.")
    run_pending_jobs()
    assert search(kb=memory, query="launch code")[0].title == "fact"


def test_a_small_kb_beside_a_big_one_still_finds_its_matches(kb, owner, org, monkeypatch):
    from knowledge.search import keyword
    from knowledge.services.bases import kb_create

    monkeypatch.setattr(keyword, "OVERFETCH", 1)  # the global top matches all belong to the big KB
    big = kb_create(org=org, actor=owner, name="Big")
    for number in range(230):
        document_create_from_text(
            kb=big, actor=owner, title=f"b{number}", text=f"otters otters otters {number}"
        )
    mine = document_create_from_text(kb=kb, actor=owner, title="Mine", text="a lone otters note")
    run_pending_jobs()
    hits = run_search(kb=kb, query="otters", mode="keyword").hits
    assert [hit.document_id for hit in hits] == [mine.pk]
    assert len(run_search(kb=big, query="otters", mode="keyword", top_k=5).hits) == 5


def test_terms_in_most_chunks_are_dropped_from_big_sqlite_queries():
    from django.db import connection

    from knowledge.search import keyword

    if connection.vendor != "sqlite":
        pytest.skip("SQLite FTS5 only")

    class Cursor:
        def __init__(self):
            self.answers = []

        def execute(self, sql, params=()):
            if "max(rowid)" in sql:
                self.answers.append((10_000,))
            else:
                self.answers.append((9_000 if '"the"' in params[0] or '"otters"' in params[0] else 3,))

        def fetchone(self):
            return self.answers.pop(0)

    assert keyword._informative_terms(Cursor(), ["otters", "kelp"]) == ["kelp"]
    assert keyword._informative_terms(Cursor(), ["otters", "the"]) in (["otters"], ["the"])
    assert keyword._informative_terms(Cursor(), ["kelp"]) == ["kelp"]


def test_postgres_selects_candidates_by_rare_terms_and_widens_when_they_are_too_few(kb, owner, monkeypatch):
    from django.db import connection

    from knowledge.search import keyword

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL full-text search only")
    docs = {f"Otter {n}": f"Otters number {n} float in the bay." for n in range(4)}
    docs["Kelp"] = "Otters sleep wrapped in kelp so the tide does not carry them off."
    made = _fill(kb, owner, docs)
    monkeypatch.setattr(keyword, "COMMON_CHUNKS", 2)  # "otter" (5 chunks) is common, "kelp" (1) is rare
    keyword._df_cache.clear()
    narrow = run_search(kb=kb, query="otters kelp", mode="keyword", top_k=1)
    assert [hit.document_id for hit in narrow.hits] == [made["Kelp"].pk]
    wide = run_search(kb=kb, query="otters kelp", mode="keyword", top_k=5)  # 1 rare match < 5: all matches
    assert len(wide.hits) == 5 and wide.hits[0].document_id == made["Kelp"].pk
    common_only = run_search(kb=kb, query="otters bay", mode="keyword", top_k=3)  # both common: AND first
    assert len(common_only.hits) == 3 and made["Kelp"].pk not in {hit.document_id for hit in common_only.hits}
    keyword._df_cache.clear()
