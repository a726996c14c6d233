"""core.db_threads: database steps of async code run on a pool thread that keeps its cache
connections and sees the caller's request context; on a loop made by async_to_sync they stay on
the caller's thread (its connection and transaction)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from asgiref.sync import async_to_sync
from django.core.cache import caches

from core import context
from core.db_threads import run_db


def _where() -> tuple[str, int, str, str]:
    return (
        threading.current_thread().name,
        id(caches["default"]),
        context.current().channel,
        context.current_request_id(),
    )


def test_on_a_servers_loop_steps_run_on_the_pool_with_the_callers_context():
    async def main():
        with context.channel_scope("api", request_id="req-123"):
            return [await run_db(_where) for _ in range(12)]

    seen = asyncio.run(main())
    assert all(name.startswith("db-step") for name, *_ in seen)
    assert {(channel, request_id) for *_, channel, request_id in seen} == {("api", "req-123")}
    # One cache object per pool thread, kept from call to call (not one per call).
    per_thread: dict[str, set[int]] = {}
    for name, cache_id, *_ in seen:
        per_thread.setdefault(name, set()).add(cache_id)
    assert all(len(ids) == 1 for ids in per_thread.values())


def test_the_callers_context_does_not_leak_into_the_next_call():
    async def main():
        with context.channel_scope("ws", request_id="req-a"):
            await run_db(_where)
        return await run_db(_where)

    *_, channel, request_id = asyncio.run(main())
    assert (channel, request_id) == (context.current().channel, context.current_request_id())
    assert request_id != "req-a"


@pytest.mark.django_db
def test_under_async_to_sync_steps_stay_on_the_callers_thread():
    caller = threading.current_thread().name
    name, *_ = async_to_sync(run_db)(_where)
    assert name == caller


def test_errors_reach_the_caller():
    def boom():
        raise LookupError("nope")

    with pytest.raises(LookupError, match="nope"):
        asyncio.run(run_db(boom))


def test_concurrent_callers_of_the_same_key_share_one_call_and_each_gets_its_outcome():
    from core.db_threads import run_db_shared

    calls = []
    gate = threading.Event()

    def slow(value):
        calls.append(value)
        gate.wait(5)
        if value == "bad":
            raise ValueError("no such row")
        return value

    async def main():
        good = [asyncio.ensure_future(run_db_shared(("row", 1), slow, "good")) for _ in range(4)]
        bad = [asyncio.ensure_future(run_db_shared(("row", 2), slow, "bad")) for _ in range(2)]
        await asyncio.sleep(0.05)
        good[0].cancel()  # one caller goes away: the others' call goes on
        gate.set()
        outcomes = await asyncio.gather(*good, *bad, return_exceptions=True)
        later = await run_db_shared(("row", 1), slow, "again")  # a new call once the first is over
        return outcomes, later

    outcomes, later = asyncio.run(main())
    assert sorted(calls) == ["again", "bad", "good"]
    assert isinstance(outcomes[0], asyncio.CancelledError)
    assert outcomes[1:4] == ["good"] * 3
    assert all(isinstance(o, ValueError) for o in outcomes[4:])
    assert later == "again"


def test_start_once_runs_one_task_per_key_and_forgets_it_however_it_ends(caplog):
    from core.db_threads import start_once, started

    runs: list[str] = []

    async def work(name: str, fail: bool = False):
        runs.append(name)
        await asyncio.sleep(0.01)
        if fail:
            raise RuntimeError("boom")

    async def main():
        start_once("k", lambda: work("first"))
        start_once("k", lambda: work("second"))  # the first is still running: not started
        assert started("k")
        await asyncio.sleep(0.05)
        assert not started("k")
        start_once("k", lambda: work("third", fail=True))
        await asyncio.sleep(0.05)
        assert not started("k")  # a failure ends it too, and is logged
        start_once("cancelled", lambda: work("cancelled"))
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()  # before it ran, as a closing loop cancels what is left
        await asyncio.sleep(0.01)
        assert not started("cancelled")

    asyncio.run(main())
    assert runs == ["first", "third"]
    assert "background work 'k' failed" in caplog.text
