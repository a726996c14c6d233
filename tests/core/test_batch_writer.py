"""``core.batch_writer``: concurrent items written together by one thread, a lone item at once, and
a bad item failing alone with its own error while the rest of its batch is written."""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, transaction

from accounts.models import Organization
from core.batch_writer import BatchWriter

pytestmark = pytest.mark.django_db(transaction=True)


def _org(slug: str) -> Organization:
    return Organization(name=slug, slug=slug)


def _writer(calls: list, gate: threading.Event | None = None) -> BatchWriter[Organization]:
    def write_many(orgs):
        calls.append([o.slug for o in orgs])
        with transaction.atomic():
            Organization.objects.bulk_create(orgs)

    def write_one(org):
        if gate is not None:
            gate.wait(5)
        calls.append([org.slug])
        org.save(force_insert=True)

    return BatchWriter("test-writer", write_many, write_one)


def test_a_lone_item_is_written_at_once_and_committed_when_write_returns():
    calls: list = []
    _writer(calls).write(_org("lone-writer"))
    assert calls == [["lone-writer"]]
    assert Organization.objects.filter(slug="lone-writer").exists()


def test_items_queued_while_the_writer_is_busy_are_written_in_one_batch():
    calls: list = []
    gate = threading.Event()
    writer = _writer(calls, gate)
    first = writer.submit(_org("busy-first"))  # the writer holds it until the gate opens
    for _ in range(100):
        if writer._queue.empty():
            break
        threading.Event().wait(0.01)
    rest = [writer.submit(_org(f"busy-{i}")) for i in range(5)]
    gate.set()
    for future in [first, *rest]:
        assert future.result(timeout=10) is None
    assert calls == [["busy-first"], [f"busy-{i}" for i in range(5)]]
    assert Organization.objects.filter(slug__startswith="busy-").count() == 6


def test_a_bad_item_fails_alone_with_its_own_error_and_the_rest_are_written():
    Organization.objects.create(name="taken", slug="taken-slug")
    calls: list = []
    gate = threading.Event()
    writer = _writer(calls, gate)
    first = writer.submit(_org("batch-first"))
    for _ in range(100):
        if writer._queue.empty():
            break
        threading.Event().wait(0.01)
    good = writer.submit(_org("batch-good"))
    bad = writer.submit(_org("taken-slug"))
    also_good = writer.submit(_org("batch-also-good"))
    gate.set()
    assert first.result(timeout=10) is None
    assert good.result(timeout=10) is None and also_good.result(timeout=10) is None
    with pytest.raises(IntegrityError):
        bad.result(timeout=10)
    # The batch was tried whole, then item by item.
    assert ["batch-good", "taken-slug", "batch-also-good"] in calls
    assert set(Organization.objects.values_list("slug", flat=True)) >= {
        "batch-first",
        "batch-good",
        "batch-also-good",
    }
    assert Organization.objects.filter(slug="taken-slug").count() == 1


def _recording_writer(seen: list, caller) -> BatchWriter[Organization]:
    def write_one(org):
        seen.append(caller.connection is not None)  # is the waiting caller still holding one?
        org.save(force_insert=True)

    return BatchWriter("test-writer", lambda orgs: [write_one(o) for o in orgs], write_one)


def test_a_caller_gives_its_connection_back_while_it_waits_for_the_writer():
    """Otherwise a burst of callers could hold every pooled connection the writer needs."""
    from django.db import connections

    connection = connections["default"]  # this thread's wrapper, not the thread-local proxy
    connection.ensure_connection()
    seen: list = []
    _recording_writer(seen, connection).write(_org("released-writer"))
    assert seen == [False]
    assert Organization.objects.filter(slug="released-writer").exists()  # reconnects when needed


def test_a_caller_inside_a_transaction_keeps_its_connection():
    from django.db import connections

    connection = connections["default"]
    seen: list = []
    with transaction.atomic():
        Organization.objects.create(name="in-atomic", slug="in-atomic")
        _recording_writer(seen, connection).write(_org("kept-writer"))
        assert connection.in_atomic_block
    assert seen == [True]
    assert Organization.objects.filter(slug__in=["in-atomic", "kept-writer"]).count() == 2
