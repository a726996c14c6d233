"""``core.loop_writer``: on a server's loop with PostgreSQL, rows are inserted from the loop itself
(no thread), concurrent items in one statement, a bad item failing alone; a broken connection is
replaced; a loop that ends closes its connection; elsewhere the fallback thread writes."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.db import IntegrityError, connection, connections

from accounts.models import Organization
from core.batch_writer import BatchWriter
from core.loop_writer import LoopRowWriter
from core.row_inserts import insert_rows

pytestmark = pytest.mark.django_db(transaction=True)


def _org(slug: str) -> Organization:
    return Organization(name=slug, slug=slug)


def _writer(batches: list, fallback_calls: list) -> LoopRowWriter[Organization]:
    def groups_of(orgs):
        batches.append([o.slug for o in orgs])
        return [(Organization, orgs)]

    def write_many(orgs):
        fallback_calls.append([o.slug for o in orgs])
        insert_rows([(Organization, orgs)])

    fallback = BatchWriter("test-fallback", write_many, lambda org: write_many([org]))
    return LoopRowWriter("test-loop-writer", groups_of, fallback=fallback)


def _backends() -> set[int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {row[0] for row in cursor.fetchall()}


def _terminate(pid: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        connections.close_all()


@pytest.mark.postgres
def test_concurrent_items_on_a_servers_loop_are_written_from_the_loop_in_one_statement():
    batches: list = []
    fallback: list = []
    writer = _writer(batches, fallback)
    slugs = [f"loop-{n}" for n in range(5)]

    async def main():
        assert writer.on_loop()  # asyncio.run's loop stands for a server's
        await asyncio.gather(*(writer.write(_org(slug)) for slug in slugs))
        await writer.write(_org("loop-alone"))

    asyncio.run(main())
    assert batches == [slugs, ["loop-alone"]]
    assert fallback == []  # no thread wrote anything
    assert set(Organization.objects.values_list("slug", flat=True)) == {*slugs, "loop-alone"}


@pytest.mark.postgres
def test_a_bad_item_fails_alone_with_its_own_error_and_the_rest_is_written():
    Organization.objects.create(name="taken", slug="loop-taken")
    writer = _writer([], [])

    async def main():
        return await asyncio.gather(
            writer.write(_org("loop-a")),
            writer.write(_org("loop-taken")),
            writer.write(_org("loop-b")),
            return_exceptions=True,
        )

    first, second, third = asyncio.run(main())
    assert first is None and third is None
    assert isinstance(second, IntegrityError)
    assert Organization.objects.filter(slug__in=["loop-a", "loop-b"]).count() == 2


@pytest.mark.postgres
def test_a_connection_the_server_ended_is_replaced_and_the_write_goes_through(caplog):
    caplog.set_level("INFO", logger="core.loop_writer")
    writer = _writer([], [])

    async def main():
        await writer.write(_org("loop-before"))
        state = writer._states[asyncio.get_running_loop()]
        ended = state.connection.info.backend_pid
        await sync_to_async(_terminate, thread_sensitive=False)(ended)  # a restart, an idle timeout
        await writer.write(_org("loop-after"))
        return ended, state.connection.info.backend_pid

    ended, now = asyncio.run(main())
    assert now != ended
    assert "its connection broke; writing again on a new one" in caplog.text
    assert Organization.objects.filter(slug__in=["loop-before", "loop-after"]).count() == 2


@pytest.mark.postgres
def test_a_loop_that_ends_closes_its_connection_and_fails_nothing_it_accepted():
    writer = _writer([], [])
    before = _backends()

    async def main():
        await writer.write(_org("loop-closing"))
        return writer._states[asyncio.get_running_loop()].connection.info.backend_pid

    pid = asyncio.run(main())
    assert pid not in before
    for _ in range(50):  # the server notices the goodbye a moment later
        if pid not in _backends():
            break
        async_to_sync(asyncio.sleep)(0.02)
    assert pid not in _backends()
    assert Organization.objects.filter(slug="loop-closing").exists()


def test_on_a_sync_callers_loop_the_fallback_thread_writes():
    batches: list = []
    fallback: list = []
    writer = _writer(batches, fallback)

    async def write():
        assert not writer.on_loop()
        await writer.write(_org("via-thread"))

    async_to_sync(write)()
    assert fallback == [["via-thread"]] and batches == []
    assert Organization.objects.filter(slug="via-thread").exists()


@pytest.mark.postgres
def test_yield_first_lets_ready_tasks_run_before_compiling_and_without_it_the_writer_compiles_at_once():
    def passes_before_compiling(yield_first: bool, slug: str) -> int:
        compiled_at: list[int] = []
        passes = 0

        def groups_of(orgs):
            compiled_at.append(passes)
            return [(Organization, orgs)]

        fallback = BatchWriter("test-fallback", lambda orgs: None, lambda org: None)
        writer = LoopRowWriter("test-yield", groups_of, fallback=fallback, yield_first=yield_first)

        async def main():
            nonlocal passes
            await writer.write(_org(f"{slug}-warm"))  # the writer's task and connection exist
            stop = False

            async def ready_task():  # always ready: one step per pass through the loop
                nonlocal passes
                while not stop:
                    passes += 1
                    await asyncio.sleep(0)

            spinning = asyncio.ensure_future(ready_task())
            await asyncio.sleep(0)
            start = passes
            await writer.write(_org(slug))
            stop = True
            await spinning
            return compiled_at[-1] - start

        return asyncio.run(main())

    at_once = passes_before_compiling(False, "yield-no")
    yielding = passes_before_compiling(True, "yield-yes")
    assert yielding > at_once
    assert Organization.objects.filter(slug__in=["yield-no", "yield-yes"]).count() == 2


@pytest.mark.postgres
def test_a_connection_left_idle_is_closed_and_the_next_write_opens_another(monkeypatch):
    from core import loop_writer

    monkeypatch.setattr(loop_writer, "IDLE_CLOSE_SECONDS", 0.05)
    writer = _writer([], [])

    async def main():
        await writer.write(_org("idle-first"))
        state = writer._states[asyncio.get_running_loop()]
        first = state.connection.info.backend_pid
        await asyncio.sleep(0.3)
        closed = state.connection is None
        await writer.write(_org("idle-second"))
        return first, closed, state.connection.info.backend_pid

    first, closed, second = asyncio.run(main())
    assert closed and second != first
    assert Organization.objects.filter(slug__in=["idle-first", "idle-second"]).count() == 2


@pytest.mark.postgres
def test_close_connections_closes_the_connection_of_a_loop_running_in_another_thread():
    import threading

    from core.loop_writer import close_connections

    writer = _writer([], [])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(writer.write(_org("background")), loop).result(10)
        state = writer._states[loop]
        pid = state.connection.info.backend_pid
        close_connections()
        assert state.connection is None
        for _ in range(50):
            if pid not in _backends():
                break
            async_to_sync(asyncio.sleep)(0.02)
        assert pid not in _backends()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert Organization.objects.filter(slug="background").exists()
