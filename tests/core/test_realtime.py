"""``core.realtime.Subscription``: a follower's wait for the next event ends after its timeout with
None, and the subscription keeps receiving afterwards (a timed-out wait loses nothing), on the
channel layer the suite runs with (Redis, or the in-memory layer without it)."""

from __future__ import annotations

import asyncio

from core.realtime import Subscription, apublish


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
