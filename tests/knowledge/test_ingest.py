"""Ingestion as a state machine: claim by conditional UPDATE, leases, dead workers, retries, dedupe."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.files.storage import default_storage
from django.utils import timezone

from core.models import Job
from knowledge.models import Chunk, ChunkEmbedding, Document
from knowledge.services import ingest
from knowledge.services.documents import (
    document_create_from_text,
    document_create_from_upload,
    document_delete,
    document_retry,
)

from .conftest import run_pending_jobs
from .files import make_pdf

TEXT = "Otters hold hands while they sleep so that they do not drift apart. " * 20


def test_a_text_document_goes_pending_processing_ready(kb, owner):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    assert document.status == "pending" and document.job is not None

    run_pending_jobs()

    document.refresh_from_db()
    assert document.status == "ready"
    assert document.attempts == 1 and document.lease_expires_at is None
    assert document.chunk_count == Chunk.objects.filter(document=document).count() >= 1
    job = Job.objects.get(pk=document.job_id)
    assert (job.status, job.percent) == ("succeeded", 100)
    assert job.result["chunks"] == document.chunk_count


def test_an_upload_is_stored_under_a_generated_name_and_pages_reach_chunks(kb, owner):
    data = make_pdf(["Page one is about otters.", "Page two is about beavers."])
    created = document_create_from_upload(kb=kb, actor=owner, data=data, filename="../../etc/animals.pdf")
    document = created.document
    assert document.file.name.startswith(f"knowledge/{kb.org_id}/") and "animals" not in document.file.name
    assert default_storage.exists(document.file.name)

    run_pending_jobs()

    assert sorted(Chunk.objects.filter(document=document).values_list("page", flat=True)) == [1, 2]


def test_claim_is_won_by_one_caller_only(kb, owner):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    first = ingest.claim(document.pk)
    second = ingest.claim(document.pk)
    assert first is not None and second is None
    assert Document.objects.get(pk=document.pk).attempts == 1


def test_a_dead_workers_document_is_reprocessed_once_after_its_lease(kb, owner):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    dead = ingest.claim(document.pk)  # a worker took it and died mid-document
    assert dead is not None
    assert ingest.requeue_expired() == []  # the lease still runs: nobody else touches it
    assert ingest.ingest_document(document.pk) is None

    Document.objects.filter(pk=document.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    requeued = []
    assert ingest.requeue_expired(enqueue=requeued.append) == [str(document.pk)]
    for document_id in requeued:
        assert ingest.ingest_document(document_id) == "ready"

    document.refresh_from_db()
    assert (document.status, document.attempts) == ("ready", 2)
    count = Chunk.objects.filter(document=document).count()
    # a second delivery of the same message, and the revived dead worker, change nothing
    assert ingest.ingest_document(document.pk) is None
    assert ingest._mine(dead).exists() is False
    assert Chunk.objects.filter(document=document).count() == count


def test_a_presumed_dead_worker_cannot_overwrite_the_new_owner(kb, owner):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    stale = ingest.claim(document.pk)
    Document.objects.filter(pk=document.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    fresh = ingest.claim(document.pk)
    assert fresh is not None and fresh.attempts == 2
    with pytest.raises(ingest.LeaseLost):
        ingest._renew(stale)
    ingest._fail(stale, "ERR_X", "late")  # ignored: not its claim any more
    assert Document.objects.get(pk=document.pk).status == "processing"


def test_too_many_attempts_fail_the_document(kb, owner, settings):
    settings.KNOWLEDGE_MAX_ATTEMPTS = 2
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    Document.objects.filter(pk=document.pk).update(attempts=2)
    assert ingest.ingest_document(document.pk) == "failed"
    document.refresh_from_db()
    assert (document.status, document.error_code) == ("failed", "ERR_TOO_MANY_ATTEMPTS")


def test_a_broken_pdf_fails_with_a_code_and_can_be_retried(kb, owner):
    created = document_create_from_upload(kb=kb, actor=owner, data=b"%PDF-1.4 broken", filename="x.pdf")
    run_pending_jobs()
    document = Document.objects.get(pk=created.document.pk)
    assert document.status == "failed"
    assert document.error_code in ("ERR_PARSE_FAILED", "ERR_NO_TEXT")
    assert Job.objects.get(pk=document.job_id).status == "failed"
    old_job = document.job_id

    retried = document_retry(document=document, actor=owner)
    assert (retried.status, retried.attempts, retried.error_code) == ("pending", 0, "")
    assert retried.job_id != old_job


def test_retry_of_a_ready_document_is_a_conflict(kb, owner):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    run_pending_jobs()
    from core.errors import ConflictError

    with pytest.raises(ConflictError):
        document_retry(document=Document.objects.get(pk=document.pk), actor=owner)


def test_the_same_content_twice_is_one_document(kb, owner):
    first = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    second = document_create_from_text(kb=kb, actor=owner, title="Otters again", text=TEXT)
    assert first.pk == second.pk
    run_pending_jobs()
    assert Document.objects.filter(kb=kb).count() == 1
    chunks = Chunk.objects.filter(kb=kb).count()
    # ingesting the same document again replaces its chunks instead of adding more
    Document.objects.filter(pk=first.pk).update(status="pending")
    ingest.ingest_document(first.pk)
    assert Chunk.objects.filter(kb=kb).count() == chunks


def test_the_same_content_in_another_kb_is_its_own_document(kb, owner, org):
    from knowledge.services.bases import kb_create

    other = kb_create(org=org, actor=owner, name="Other")
    a = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    b = document_create_from_text(kb=other, actor=owner, title="Otters", text=TEXT)
    assert a.pk != b.pk


def test_vectors_are_stored_for_the_serving_index(vector_kb, owner):
    document = document_create_from_text(kb=vector_kb, actor=owner, title="Otters", text=TEXT)
    run_pending_jobs()
    document.refresh_from_db()
    assert document.status == "ready" and document.embedded is True
    assert ChunkEmbedding.objects.filter(index=vector_kb.active_index).count() == document.chunk_count
    assert vector_kb.active_index.__class__.objects.get(pk=vector_kb.active_index_id).dimension == 64


def test_an_embedding_failure_leaves_the_document_searchable_by_keyword(org, owner, provider):
    from knowledge.services.bases import kb_create

    kb = kb_create(
        org=org, actor=owner, name="Down", embedding_backend="provider", embedding_model="fail-500"
    )
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text=TEXT)
    run_pending_jobs()
    document.refresh_from_db()
    assert document.status == "ready" and document.embedded is False
    assert document.error_code
    from knowledge.search import run_search

    result = run_search(kb=kb, query="otters sleep", mode="hybrid")
    assert result.hits and result.hits[0].document_id == document.pk


def test_deleting_a_document_removes_chunks_vectors_and_file(kb, owner, django_capture_on_commit_callbacks):
    created = document_create_from_upload(kb=kb, actor=owner, data=b"hello otters", filename="a.txt")
    run_pending_jobs()
    name = created.document.file.name
    with django_capture_on_commit_callbacks(execute=True):
        document_delete(document=Document.objects.get(pk=created.document.pk), actor=owner)
    assert not Chunk.objects.filter(kb=kb).exists()
    assert not default_storage.exists(name)


def test_a_batch_of_documents_is_embedded_together_and_a_bad_one_fails_alone(vector_kb, owner):
    good = [
        document_create_from_text(
            kb=vector_kb, actor=owner, title=f"Doc {i}", text=f"Otters number {i} swim."
        )
        for i in range(3)
    ]
    bad = document_create_from_upload(
        kb=vector_kb, actor=owner, data=b"%PDF-1.4 junk", filename="x.pdf"
    ).document
    outcomes = ingest.ingest_documents([d.pk for d in good] + [bad.pk])
    assert [outcomes[str(d.pk)] for d in good] == ["ready"] * 3
    assert outcomes[str(bad.pk)] == "failed"
    assert ChunkEmbedding.objects.filter(index=vector_kb.active_index).count() == 3
    assert all(Document.objects.get(pk=d.pk).embedded for d in good)
    assert all(Job.objects.get(pk=d.job_id).status == "succeeded" for d in good)


# --- bulk uploads: a worker takes the other pending documents of the KB --------------------------


def _texts(kb, owner, count: int, prefix: str = "Doc") -> list[Document]:
    return [
        document_create_from_text(kb=kb, actor=owner, title=f"{prefix} {i}", text=f"{prefix} {i}: {TEXT}")
        for i in range(count)
    ]


def _job(document: Document) -> Job:
    return Job.objects.get(pk=document.job_id)


def test_one_job_ingests_the_pending_documents_of_its_kb_and_finishes_their_jobs(kb, owner, org):
    from core.tasks import run_job
    from knowledge.services.bases import kb_create

    first, *others = _texts(kb, owner, 3)
    elsewhere = _texts(kb_create(org=org, actor=owner, name="Other"), owner, 1, prefix="Other")[0]

    run_job(str(first.job_id))  # one worker, one message

    for document in [first, *others]:
        document.refresh_from_db()
        assert (document.status, document.attempts) == ("ready", 1)
        assert Chunk.objects.filter(document=document).count() == document.chunk_count >= 1
        job = _job(document)
        assert (job.status, job.percent, job.result["status"]) == ("succeeded", 100, "ready")
    assert Document.objects.get(pk=elsewhere.pk).status == "pending"  # another KB: its own worker

    # The other documents' messages arrive later and find their jobs finished.
    assert run_pending_jobs() == 1
    assert Document.objects.get(pk=elsewhere.pk).status == "ready"
    assert {d.attempts for d in Document.objects.all()} == {1}


def test_a_bulk_stops_at_its_limit_and_can_be_turned_off(kb, owner, settings):
    from core.tasks import run_job

    documents = _texts(kb, owner, 4)
    settings.KNOWLEDGE_INGEST_BULK_DOCS = 2
    run_job(str(documents[0].job_id))
    states = lambda: [Document.objects.get(pk=d.pk).status for d in documents]  # noqa: E731
    assert states() == ["ready", "ready", "pending", "pending"]

    settings.KNOWLEDGE_INGEST_BULK_DOCS = 1
    run_job(str(documents[2].job_id))
    assert states() == ["ready", "ready", "ready", "pending"]


def test_by_default_a_bulk_takes_every_pending_document_of_the_kb(kb, owner, settings):
    from core.tasks import run_job

    assert settings.KNOWLEDGE_INGEST_BULK_DOCS == 0  # no count limit
    documents = _texts(kb, owner, 5)
    run_job(str(documents[0].job_id))
    assert [Document.objects.get(pk=d.pk).status for d in documents] == ["ready"] * 5


def test_a_bad_document_in_a_bulk_fails_alone_with_its_job(kb, owner):
    good = _texts(kb, owner, 2)
    bad = document_create_from_upload(kb=kb, actor=owner, data=b"%PDF-1.4 junk", filename="x.pdf").document

    assert ingest.ingest_document(good[0].pk) == "ready"

    assert [Document.objects.get(pk=d.pk).status for d in good] == ["ready", "ready"]
    bad.refresh_from_db()
    assert bad.status == "failed" and bad.error_code
    assert (_job(bad).status, _job(bad).error["code"]) == ("failed", bad.error_code)


def test_a_job_whose_document_another_worker_holds_waits_for_that_worker(kb, owner, monkeypatch):
    from core.tasks import run_job

    document = _texts(kb, owner, 1)[0]
    other = ingest.claim(document.pk)  # another worker's bulk has it
    waits = []

    def other_worker_finishes(seconds):
        waits.append(seconds)
        rows = ingest._prepare(other, report=False)
        ingest._finish(other, rows, None)

    monkeypatch.setattr(ingest.time, "sleep", other_worker_finishes)
    run_job(str(document.job_id))

    assert len(waits) == 1
    job = _job(document)
    assert (job.status, job.result["status"]) == ("succeeded", "ready")  # not "processing"
    assert Document.objects.get(pk=document.pk).attempts == 1  # ingested once, by the other worker


def test_a_waiting_job_takes_the_document_over_when_the_holders_lease_runs_out(kb, owner, monkeypatch):
    document = _texts(kb, owner, 1)[0]
    assert ingest.claim(document.pk) is not None  # that worker dies

    def lease_runs_out(seconds):
        Document.objects.filter(pk=document.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))

    monkeypatch.setattr(ingest.time, "sleep", lease_runs_out)
    assert ingest.ingest_or_wait(document.pk) == "ready"
    document.refresh_from_db()
    assert (document.status, document.attempts) == ("ready", 2)


def test_a_deleted_documents_job_says_deleted(kb, owner):
    from core.tasks import run_job

    document = _texts(kb, owner, 1)[0]
    Document.objects.filter(pk=document.pk).delete()
    run_job(str(document.job_id))
    job = _job(document)
    assert (job.status, job.result["status"]) == ("succeeded", "deleted")


def test_bulk_ingestion_shortens_gil_turns_while_it_runs_and_restores_them(monkeypatch):
    """The encoding thread needs the GIL between torch operations: while this thread runs ORM code
    it must not wait Python's default 5 ms for each turn; concurrent ingestions share the setting."""
    import sys

    from knowledge.services import ingest

    default = sys.getswitchinterval()
    seen: list[float] = []

    def waves(documents, outcomes):
        seen.append(sys.getswitchinterval())
        with ingest._short_gil_turns():  # a second ingestion in another thread of the process
            seen.append(sys.getswitchinterval())
        seen.append(sys.getswitchinterval())  # still short: the outer one runs
        raise RuntimeError("boom")

    monkeypatch.setattr(ingest, "_ingest_waves", waves)
    with pytest.raises(RuntimeError):
        ingest._ingest_claimed([], {})
    assert seen == [pytest.approx(ingest.INGEST_SWITCH_INTERVAL)] * 3
    assert sys.getswitchinterval() == pytest.approx(default)  # restored, even after a failure


def test_a_job_waiting_on_another_workers_bulk_ingests_the_kbs_other_pending_documents(
    kb, owner, monkeypatch
):
    held, *pending = _texts(kb, owner, 3)
    other = ingest.claim(held.pk)  # another worker's bulk has it and will claim more as it goes
    waits = []

    def other_worker_finishes(seconds):
        waits.append(seconds)
        ingest._finish(other, ingest._prepare(other, report=False), None)

    monkeypatch.setattr(ingest.time, "sleep", other_worker_finishes)
    assert ingest.ingest_or_wait(held.pk) == "ready"

    # The pending documents were ingested by this caller, in the time it would have spent waiting:
    # it waited only once none was left.
    assert len(waits) == 1
    assert [Document.objects.get(pk=d.pk).status for d in pending] == ["ready", "ready"]
    assert Chunk.objects.filter(document__in=pending).count() >= 2
    assert Document.objects.get(pk=held.pk).attempts == 1


# --- a bulk works in batches: statements per batch of documents, not per document ---------------


def test_a_bulk_of_many_documents_costs_a_few_statements_per_batch_not_per_document(kb, owner):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    documents = _texts(kb, owner, 40)
    with CaptureQueriesContext(connection) as queries:
        assert ingest.ingest_document(documents[0].pk) == "ready"

    assert [Document.objects.get(pk=d.pk).status for d in documents] == ["ready"] * 40
    assert all(_job(d).status == "succeeded" and _job(d).result["chunks"] >= 1 for d in documents)
    # Claims, chunks, full-text entries, states and jobs are written a batch at a time: about 18
    # statements per document (over 700 here) before.
    assert len(queries) < 80


def test_a_bulk_claims_pending_documents_in_batches_skipping_held_ones_and_failing_exhausted_ones(
    kb, owner, settings
):
    documents = _texts(kb, owner, 5)
    assert ingest.claim(documents[1].pk) is not None  # another worker holds it
    Document.objects.filter(pk=documents[2].pk).update(attempts=settings.KNOWLEDGE_MAX_ATTEMPTS)

    first = ingest._claim_pending(kb.pk, 3)

    assert [d.pk for d in first] == [documents[0].pk, documents[3].pk]
    assert {(d.status, d.attempts) for d in first} == {("processing", 1)}
    exhausted = Document.objects.get(pk=documents[2].pk)
    assert (exhausted.status, exhausted.error_code) == ("failed", "ERR_TOO_MANY_ATTEMPTS")
    assert [d.pk for d in ingest._claim_pending(kb.pk, 3)] == [documents[4].pk]
    assert ingest._claim_pending(kb.pk, 3) == []


def test_when_a_batch_cannot_be_stored_each_document_is_stored_alone_and_a_broken_one_fails_alone(
    kb, owner, monkeypatch
):
    from django.db import DatabaseError

    documents = _texts(kb, owner, 4)
    broken = documents[2]
    store = ingest._store_chunks

    def refuse(drafted):
        if len(drafted) > 1 or drafted[0][0].pk == broken.pk:
            raise DatabaseError("value too long for type character varying(300)")
        return store(drafted)

    monkeypatch.setattr(ingest, "_store_chunks", refuse)
    ingest.ingest_document(documents[0].pk)

    broken.refresh_from_db()
    assert (broken.status, broken.error_code) == ("failed", "ERR_INGEST_FAILED")
    assert _job(broken).status == "failed"
    assert not Chunk.objects.filter(document=broken).exists()
    others = [d for d in documents if d.pk != broken.pk]
    assert [Document.objects.get(pk=d.pk).status for d in others] == ["ready"] * 3
    assert all(Chunk.objects.filter(document=d).exists() for d in others)


def test_a_document_taken_over_during_a_bulk_is_left_to_its_new_owner_while_the_rest_finish(
    kb, owner, monkeypatch
):
    from django.db.models import F

    documents = _texts(kb, owner, 3)
    lost = documents[1]
    start = ingest._start_wave

    def taken_over(group):  # presumed dead meanwhile: another worker claimed it again
        Document.objects.filter(pk=lost.pk).update(attempts=F("attempts") + 1)
        return start(group)

    monkeypatch.setattr(ingest, "_start_wave", taken_over)
    outcomes = ingest.ingest_documents([d.pk for d in documents])

    assert [outcomes[str(d.pk)] for d in documents] == ["ready", None, "ready"]
    lost.refresh_from_db()
    assert (lost.status, lost.attempts, _job(lost).status) == ("processing", 2, "pending")
    assert [_job(d).status for d in (documents[0], documents[2])] == ["succeeded", "succeeded"]
