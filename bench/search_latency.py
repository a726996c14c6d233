"""Search latency of a 100,000-chunk knowledge base: p50/p95 of hybrid search, and ingestion rate.

Run from the project root::

    .venv/bin/python bench/search_latency.py [--chunks 100000] [--queries 200]
        [--database-url postgres://…] [--backend local|none]

It boots Django with the production settings on a throwaway SQLite database in a temporary folder
(or ``--database-url`` / ``DATABASE_URL``; its rows are deleted at the end), then:

1. ingests synthetic documents (Zipf-distributed words of a 20,000-word vocabulary) through the
   real pipeline (``document_create_text`` + ``ingest_documents``: claim, parse, token chunking,
   full-text index) until the KB holds ``--chunks`` chunks, and reports chunks/s of that path;
2. gives the KB's serving index version one vector per chunk, of the model's dimension (384),
   written in bulk (embedding 100k chunks with the local model would take an hour here; its
   throughput is what ``bench/retrieval_quality.py`` measures);
3. runs ``--queries`` hybrid searches (3-6 vocabulary words, top 10) after one warm-up query that
   loads the vector cache, and prints p50/p95/max latency of the whole ``run_search`` (query
   embedding with the local model when installed, keyword SQL, exact numpy cosine over all
   vectors, fusion, reading the hits), plus keyword-only and vector-only runs for comparison.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from retrieval_quality import _setup, analyze_tables  # noqa: E402 - the bench folder is not a package

DIMENSION = 384


def _vocabulary(size: int, rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))))
    return sorted(words)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--backend", default="local", choices=["local", "none"])
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    workdir = _setup(args.database_url)
    import shutil

    import numpy as np
    from django.db.models import F

    from accounts.models import Organization
    from knowledge.embeddings import local_available
    from knowledge.models import Chunk, ChunkEmbedding, IndexVersion, KnowledgeBase
    from knowledge.search import run_search
    from knowledge.services.bases import kb_create
    from knowledge.services.documents import document_create_text
    from knowledge.services.ingest import ingest_documents

    backend = args.backend if args.backend == "none" or local_available() else "none"
    rng = random.Random(args.seed)
    vocabulary = _vocabulary(20_000, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]  # Zipf: a few common words

    def words(n: int) -> str:
        return " ".join(rng.choices(vocabulary, weights=weights, k=n))

    org = Organization.objects.create(name="bench-latency", slug=f"bench-latency-{os.getpid()}")
    try:
        # Chunks go in without vectors (backend none); the index version is attached afterwards.
        kb = kb_create(org=org, actor=None, name="Latency", chunk_size=128, chunk_overlap=0)
        started = time.perf_counter()
        total = 0
        while total < args.chunks:
            batch = []
            for _ in range(50):
                text = "\n\n".join(words(80) + "." for _ in range(40))
                batch.append(document_create_text(kb=kb, actor=None, title=words(4), text=text).document.pk)
            ingest_documents(batch)
            total = Chunk.objects.filter(kb=kb).count()
            print(f"  {total} chunks ({total / (time.perf_counter() - started):.0f} chunks/s)", flush=True)
        ingest_seconds = time.perf_counter() - started
        print(f"ingestion (parse, chunk, store, full-text index): {total} chunks in {ingest_seconds:.1f} s, "
              f"{total / ingest_seconds:.0f} chunks/s")  # fmt: skip

        model = "all-minilm-l6-v2" if backend == "local" else "random"
        index = IndexVersion.objects.create(
            org=org, kb=kb, backend=backend if backend == "local" else "provider", model=model,
            dimension=DIMENSION, status=IndexVersion.Status.READY,
        )  # fmt: skip
        KnowledgeBase.objects.filter(pk=kb.pk).update(
            active_index=index, embedding_backend=index.backend, embedding_model=model
        )
        generator = np.random.default_rng(args.seed)
        ids = list(Chunk.objects.filter(kb=kb).values_list("pk", flat=True))
        began = time.perf_counter()
        for start in range(0, len(ids), 5000):
            part = ids[start : start + 5000]
            vectors = generator.standard_normal((len(part), DIMENSION)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            ChunkEmbedding.objects.bulk_create(
                [
                    ChunkEmbedding(index=index, chunk_id=cid, vector=v.tobytes())
                    for cid, v in zip(part, vectors, strict=True)
                ],
                batch_size=5000,
            )
        IndexVersion.objects.filter(pk=index.pk).update(revision=F("revision") + 1)
        print(f"vectors: {len(ids)} x {DIMENSION} written in {time.perf_counter() - began:.1f} s")
        analyze_tables()
        kb.refresh_from_db()

        if backend != "local":  # no local model: embed queries with random vectors of the right size
            import knowledge.embeddings as embeddings

            embeddings.embed_query = lambda **kw: generator.standard_normal(DIMENSION).astype(np.float32)

        queries = [words(rng.randint(3, 6)) for _ in range(args.queries)]
        began = time.perf_counter()
        run_search(kb=kb, query=queries[0], mode="hybrid")
        print(f"warm-up (loads the vector cache): {1000 * (time.perf_counter() - began):.0f} ms")
        print(f"\n{'mode':<8} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   ({args.queries} queries, top 10)")
        from knowledge import embeddings
        from knowledge.search import keyword as keyword_module

        for mode in ("hybrid", "keyword", "vector"):
            # Every mode starts cold: no query vector nor term count cached by the mode before it.
            if hasattr(embeddings, "_local_query_vector"):
                embeddings._local_query_vector.cache_clear()
            getattr(keyword_module, "_df_cache", {}).clear()
            latencies = []
            for query in queries:
                began = time.perf_counter()
                run_search(kb=kb, query=query, mode=mode, top_k=10)
                latencies.append(1000 * (time.perf_counter() - began))
            print(f"{mode:<8} {statistics.median(latencies):>8.1f} {_pct(latencies, 0.95):>8.1f} "
                  f"{max(latencies):>8.1f}")  # fmt: skip
        print(
            f"query embedding: {'local model' if backend == 'local' else 'random vectors (no local model)'}"
        )
    finally:
        org.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
