"""``core.realtime.Subscription``: a follower's wait for the next event ends after its timeout with
None, and the subscription keeps receiving afterwards (a timed-out wait loses nothing), on the
channel layer the suite runs with (Redis, or the in-memory layer without it)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.realtime import Subscription, apublish, pushes_across_processes


def test_a_wait_that_times_out_answers_none_and_the_next_event_still_arrives():
    group = "test-realtime-timeout"

    async def scenario():
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10), Subscription(group) as subscription:
            started = loop.time()
            first = await subscription.next(0.2)
            waited = loop.time() - started
            await apublish(group, {"n": 1})
            second = await subscription.next(5)
            third = await subscription.next(0.05)
        return first, waited, second, third

    first, waited, second, third = asyncio.run(scenario())
    assert first is None
    assert waited >= 0.15  # it waited for its timeout, not less
    assert second == {"n": 1}
    assert third is None  # nothing twice


def test_events_published_while_nobody_waits_are_received_in_order():
    group = "test-realtime-order"

    async def scenario():
        async with asyncio.timeout(10), Subscription(group) as subscription:
            for n in range(3):
                await apublish(group, {"n": n})
            return [await subscription.next(5) for _ in range(3)]

    assert asyncio.run(scenario()) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_dedicated_subscription_receives_like_any_other():
    group = "test-realtime-dedicated"

    async def scenario():
        async with asyncio.timeout(10), Subscription(group, dedicated=True) as subscription:
            assert await subscription.next(0.05) is None
            for n in range(3):
                await apublish(group, {"n": n})
            return [await subscription.next(5) for _ in range(3)], await subscription.next(0.05)

    assert asyncio.run(scenario()) == ([{"n": 0}, {"n": 1}, {"n": 2}], None)


def test_waits_of_a_dedicated_subscription_that_time_out_cost_the_layer_no_connection(monkeypatch):
    """channels_redis waits in a blocking pop; a wait cancelled mid-pop made redis-py drop that
    connection, and the next wait opened a new one (four times a second for the turns' watcher)."""
    if not pushes_across_processes():
        pytest.skip("the in-memory layer has no connections to lose (runs on Redis)")
    from redis.asyncio.connection import Connection

    connects = []
    connect = Connection._connect  # the socket's (``connect`` is called for every command)

    async def counted(self, *args, **kwargs):
        connects.append(self)
        return await connect(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "_connect", counted)
    group = "test-realtime-connections"

    async def scenario():
        async with asyncio.timeout(20), Subscription(group, dedicated=True) as subscription:
            await apublish(group, {"n": 0})  # once through: the layer's connections are open now
            assert await subscription.next(5) == {"n": 0}
            opened = len(connects)
            for _ in range(6):
                assert await subscription.next(0.05) is None
            await apublish(group, {"n": 1})
            received = await subscription.next(5)
            return opened, received

    opened, received = asyncio.run(scenario())
    assert received == {"n": 1}
    assert len(connects) - opened <= 1  # the publish may take a connection of its own; no more


def test_a_dedicated_subscription_on_one_loop_leaves_other_loops_free_to_receive():
    """The turns' watcher holds its subscription on its loop (a server's, or the process's
    background loop) while followers on other loops come and go."""
    group = "test-realtime-loops"
    ready, stop = threading.Event(), threading.Event()
    received: list = []

    async def watcher():
        async with Subscription(group, dedicated=True) as subscription:
            ready.set()
            while not stop.is_set():
                event = await subscription.next(0.05)
                if event is not None:
                    received.append(event)

    thread = threading.Thread(target=asyncio.run, args=(watcher(),))
    thread.start()
    try:
        assert ready.wait(10)

        async def follower():
            async with asyncio.timeout(10), Subscription(group) as subscription:
                await apublish(group, {"n": 1})
                return await subscription.next(5)

        assert asyncio.run(follower()) == {"n": 1}
    finally:
        stop.set()
        thread.join(10)
    assert received == [{"n": 1}]
