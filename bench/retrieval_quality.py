"""Retrieval quality of knowledge search on BEIR SciFact: nDCG@10 and recall@100 per mode.

Run from the project root::

    .venv/bin/python bench/retrieval_quality.py [--data /work/shared/data/scifact] [--backend local]
        [--database-url postgres://…] [--limit-docs N] [--chunk-size 256] [--threads 1] [--encoders 1]
        [--bulk 256] [--workers 2]

It boots Django with the production settings on a throwaway SQLite database in a temporary folder
(or the database of ``--database-url`` / ``DATABASE_URL``; its rows are deleted at the end), makes
an org and a knowledge base with the chosen embedding backend (``local``: the offline MiniLM
model), and ingests the corpus through the real pipeline, timed from the first upload to the last
ready document: a thread creates the documents as uploads do (``document_create_text`` per abstract,
title + text, each with its ingestion job on the Celery broker), and a real Celery worker runs the
jobs, started as the Procfile starts it with ``--workers`` processes (default: the worker's
``CELERY_CONCURRENCY``, 2). The worker that takes a document takes the other pending documents of
the KB with it (``KNOWLEDGE_INGEST_BULK_DOCS``, ``--bulk``) and ingests them in waves (claim, parse,
token chunking, full-text index, vectors), the later jobs finding their documents done. With
``--workers 0`` the main thread of this process runs the jobs instead (``core.tasks.run_job``), one
at a time: one worker process, which a profiler can watch.

Then it runs the 300 test queries through ``knowledge.search.run_search`` in keyword, vector and
hybrid modes (chunks are mapped to their document: a document ranks where its best chunk ranks)
and prints nDCG@10 and recall@100 for each, plus hybrid with a few fusion settings computed from
the same two rankings (the default is the one in settings: ``KNOWLEDGE_RRF_*``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup(
    database_url: str | None,
    threads: int | None = None,
    encoders: int | None = None,
    in_process: bool = False,
) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ["VAR_DIR"] = str(workdir)
    if in_process:  # ingestion runs here: the jobs' messages go nowhere
        os.environ["CELERY_BROKER_URL"] = "memory://"
    else:  # the embedded default's filesystem broker under the work folder, shared with the worker
        os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads is not None:  # torch threads of the local model (0: every core)
        os.environ["KNOWLEDGE_LOCAL_THREADS"] = str(threads)
    if encoders is not None:  # copies of the local model encoding at once
        os.environ["KNOWLEDGE_LOCAL_ENCODERS"] = str(encoders)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    else:
        os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return workdir


class Worker:
    """A Celery worker process as the Procfile starts it, on this benchmark's database and broker."""

    def __init__(self, workdir: Path, concurrency: int) -> None:
        self.log = open(workdir / "worker.log", "w+")  # noqa: SIM115 - closed in stop()
        self.ready = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                "--concurrency", str(concurrency), "--hostname", f"bench-{os.getpid()}@%h",
            ],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, name="worker-log", daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.log.write(line)
            if " ready." in line:
                self.ready.set()

    def wait_ready(self, timeout: float = 60) -> None:
        if not self.ready.wait(timeout) or self.process.poll() is not None:
            self.log.seek(0)
            raise SystemExit(f"The Celery worker did not start:\n{self.log.read()[-4000:]}")

    def stop(self) -> float:
        """Stop the worker; returns the CPU seconds it and its pool processes used."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


def _finished(documents) -> int:
    from knowledge.models import Document

    return documents.filter(status__in=[Document.Status.READY, Document.Status.FAILED]).count()


def _report(documents, total: int, started: float) -> None:
    done = _finished(documents)
    print(f"  ingested {done}/{total} ({done / (time.perf_counter() - started):.1f} docs/s)", flush=True)


def _wait_ready(documents, total: int, *, started: float | None, timeout: float = 3600) -> None:
    """Poll until every one of ``total`` documents is ready or failed (the worker ingests them)."""
    deadline, last_report = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        if _finished(documents) >= total:
            return
        if started is not None and time.monotonic() - last_report > 15:
            _report(documents, total, started)
            last_report = time.monotonic()
        time.sleep(0.2)
    raise SystemExit(f"Ingestion did not finish within {timeout:.0f} s")


def analyze_tables() -> None:
    """PostgreSQL: refresh the planner's statistics after a bulk load, as autovacuum soon would
    (without them it intersects the KB's whole btree with the GIN index on every keyword query)."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE knowledge_chunk, knowledge_document, knowledge_chunkembedding")


def _load(data: Path, limit_docs: int | None):
    with open(data / "corpus.jsonl") as handle:
        corpus = [json.loads(line) for line in handle]
    queries = {}
    with open(data / "queries.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            queries[row["_id"]] = row["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(data / "qrels-test.tsv") as handle:
        next(handle)
        for line in handle:
            query_id, doc_id, score = line.strip().split("\t")
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    if limit_docs:  # a smaller corpus: every judged document, then the first others as distractors
        judged = {doc for rels in qrels.values() for doc in rels}
        others = [doc for doc in corpus if doc["_id"] not in judged]
        corpus = [doc for doc in corpus if doc["_id"] in judged] + others[: max(0, limit_docs - len(judged))]
    return corpus, {q: queries[q] for q in qrels}, qrels


def ndcg_at(ranked: list[str], rels: dict[str, int], k: int = 10) -> float:
    dcg = sum(rels.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sorted(rels.values(), reverse=True)[:k]
    idcg = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], rels: dict[str, int], k: int = 100) -> float:
    relevant = {doc for doc, rel in rels.items() if rel > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/work/shared/data/scifact")
    parser.add_argument("--backend", default="local", choices=["local", "none"])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument(
        "--limit-docs", type=int, default=None, help="smaller corpus: every judged document plus distractors"
    )
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--chunk-overlap", type=int, default=32)
    parser.add_argument(
        "--bulk", type=int, default=None,
        help="KNOWLEDGE_INGEST_BULK_DOCS: pending documents of the KB one job's worker takes together",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the local model, as KNOWLEDGE_LOCAL_THREADS (1: the other core does the "
        "database work of the pipelined bulk ingestion; 0: every core)",
    )  # fmt: skip
    parser.add_argument(
        "--encoders", type=int, default=None,
        help="copies of the local model encoding at once, as KNOWLEDGE_LOCAL_ENCODERS (default: the setting)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=None,
        help="processes of the Celery worker that ingests (default: CELERY_CONCURRENCY, as `make run` starts "
        "it); 0: this process runs the jobs one at a time instead",
    )  # fmt: skip
    args = parser.parse_args()

    if args.bulk is not None:
        os.environ["KNOWLEDGE_INGEST_BULK_DOCS"] = str(args.bulk)
    workdir = _setup(args.database_url, args.threads, args.encoders, in_process=args.workers == 0)
    from django.conf import settings
    from django.db import connection
    from django.db.models import Count

    from accounts.models import Organization
    from core.tasks import run_job
    from knowledge import search as search_module
    from knowledge.embeddings import local_available
    from knowledge.models import Chunk, Document
    from knowledge.search import rrf, run_search
    from knowledge.services.bases import kb_create
    from knowledge.services.documents import document_create_text

    if args.backend == "local" and not local_available():
        print("The local embedding backend is not installed (pip install -r requirements-local.txt).")
        return 2
    corpus, queries, qrels = _load(Path(args.data), args.limit_docs)
    org = Organization.objects.create(name="bench-retrieval", slug=f"bench-retrieval-{os.getpid()}")
    worker: Worker | None = None
    try:
        kb = kb_create(
            org=org, actor=None, name="SciFact", embedding_backend=args.backend,
            chunk_size=args.chunk_size, chunk_overlap=args.chunk_overlap,
        )  # fmt: skip
        if args.backend == "local":  # load the model before the clock starts (a worker keeps it loaded)
            from knowledge.embeddings import embed_texts, local_warm_up

            local_warm_up(kb.embedding_model)  # every copy that encodes at once
            embed_texts(org=org, texts=["warm up"] * 8, backend="local", model=kb.embedding_model)
        from knowledge.embeddings import local_encoders, local_precision

        workers = settings.CELERY_WORKER_CONCURRENCY if args.workers is None else args.workers
        if workers:
            worker = Worker(workdir, workers)
            worker.wait_ready()
            # Warm each pool process as a running worker is warm: one document in a KB of its own
            # (documents of one KB would be ingested together by one process).
            warm = [
                document_create_text(
                    kb=kb_create(org=org, actor=None, name=f"warm-up {i}", embedding_backend=args.backend),
                    actor=None, title="warm up", text="Warm up the worker.",
                ).document.pk
                for i in range(workers)
            ]  # fmt: skip
            _wait_ready(Document.objects.filter(pk__in=warm), len(warm), started=None)
        print(
            f"corpus: {len(corpus)} documents, {len(queries)} test queries; backend {args.backend}; "
            f"ingested by {f'a Celery worker of {workers} processes' if workers else 'this process'}; "
            f"local model threads {settings.KNOWLEDGE_LOCAL_THREADS or os.cpu_count()}, "
            f"copies {local_encoders()}, batch {settings.KNOWLEDGE_LOCAL_BATCH}, "
            f"precision {local_precision() if args.backend == 'local' else '-'}"
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        jobs: queue.Queue = queue.Queue()

        def upload() -> None:  # what the web process does for each POST …/documents
            try:
                for doc in corpus:
                    created = document_create_text(
                        kb=kb, actor=None, title=doc.get("title") or doc["_id"],
                        # BEIR: title + text
                        text=f"{doc.get('title') or ''}\n\n{doc.get('text') or ''}".strip(),
                        metadata={"beir_id": doc["_id"]},
                    )  # fmt: skip
                    jobs.put(created.document.job_id)
            finally:
                jobs.put(None)
                connection.close()

        uploader = threading.Thread(target=upload, name="uploads")
        uploader.start()
        if worker is not None:  # the worker runs the jobs from the broker
            _wait_ready(Document.objects.filter(kb=kb), len(corpus), started=started)
        else:
            ran = 0
            while (job_id := jobs.get()) is not None:  # what a worker does with each job's message
                run_job(str(job_id))
                ran += 1
                if ran % 256 == 0:
                    _report(Document.objects.filter(kb=kb), len(corpus), started)
        uploader.join()
        ingest_seconds = time.perf_counter() - started
        ingest_cpu = time.process_time() - cpu_started  # every thread of this process: load-independent
        if worker is not None:
            ingest_cpu += worker.stop()
        statuses = dict(
            Document.objects.filter(kb=kb).values("status").annotate(n=Count("pk")).values_list("status", "n")
        )
        analyze_tables()
        chunks = Chunk.objects.filter(kb=kb).count()
        print(
            f"ingestion: {ingest_seconds:.1f} s for {len(corpus)} documents, {chunks} chunks; {statuses}; "
            f"CPU {ingest_cpu:.1f} s{' (uploads + worker)' if worker else ''}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )

        beir_of = {  # SQLite's JSON extraction turns "4983" into 4983
            pk: str(beir_id)
            for pk, beir_id in Chunk.objects.filter(kb=kb).values_list("pk", "document__metadata__beir_id")
        }
        search_module.MAX_TOP_K = 300  # enough chunks for 100 distinct documents

        def documents(hits) -> list[str]:
            seen: dict[str, None] = {}
            for hit in hits:
                seen.setdefault(beir_of[hit.chunk_id], None)
            return list(seen)

        modes = ["keyword"] + (["vector", "hybrid"] if args.backend != "none" else [])
        rankings: dict[str, dict[str, list]] = {mode: {} for mode in modes}
        timings: dict[str, float] = {mode: 0.0 for mode in modes}
        for query_id, text in queries.items():
            for mode in modes:
                began = time.perf_counter()
                result = run_search(kb=kb, query=text, top_k=300, mode=mode)
                timings[mode] += time.perf_counter() - began
                rankings[mode][query_id] = result.hits
        print(f"\n{'mode':<28} {'nDCG@10':>8} {'recall@100':>11} {'ms/query':>9}")
        for mode in modes:
            ranked = {q: documents(hits) for q, hits in rankings[mode].items()}
            ndcg = sum(ndcg_at(ranked[q], qrels[q]) for q in queries) / len(queries)
            recall = sum(recall_at(ranked[q], qrels[q]) for q in queries) / len(queries)
            label = mode if mode != "hybrid" else (
                f"hybrid (k={settings.KNOWLEDGE_RRF_K}, w={settings.KNOWLEDGE_RRF_KEYWORD_WEIGHT:g}:"
                f"{settings.KNOWLEDGE_RRF_VECTOR_WEIGHT:g})"
            )  # fmt: skip
            per_query = 1000 * timings[mode] / len(queries)
            print(f"{label:<28} {ndcg:>8.3f} {recall:>11.3f} {per_query:>9.1f}")
        if "hybrid" in modes:
            print("\nfusion settings (same keyword and vector rankings, fused offline):")
            for k, w_keyword, w_vector in [(60, 1, 1), (20, 1, 1), (60, 1.5, 1), (60, 1, 1.5), (10, 1, 1)]:
                fused_ranked = {}
                for q in queries:
                    keyword = [(h.chunk_id, h.score) for h in rankings["keyword"][q]]
                    vector = [(h.chunk_id, h.score) for h in rankings["vector"][q]]
                    fused = rrf([(keyword, w_keyword), (vector, w_vector)], k=k)
                    seen: dict[str, None] = {}
                    for chunk_id, _, _ in fused:
                        seen.setdefault(beir_of[chunk_id], None)
                    fused_ranked[q] = list(seen)
                ndcg = sum(ndcg_at(fused_ranked[q], qrels[q]) for q in queries) / len(queries)
                recall = sum(recall_at(fused_ranked[q], qrels[q]) for q in queries) / len(queries)
                print(
                    f"  rrf k={k:<3} w={w_keyword:g}:{w_vector:g}  nDCG@10 {ndcg:.3f}  "
                    f"recall@100 {recall:.3f}"
                )
    finally:
        if worker is not None and worker.process.poll() is None:
            worker.stop()
        org.delete()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
