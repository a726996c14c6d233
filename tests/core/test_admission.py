"""The gate of the requests that start streams (``core.admission``): a free slot lets a request on
in the same step, the others wait in arrival order, a slot goes on when its holder is done or after
the hold, a request that has waited ``max_wait`` goes on beside the holders, and a request that
goes away while waiting takes no slot with it."""

from __future__ import annotations

import asyncio

import pytest

from core import admission
from core.admission import Admission


def _run(coroutine_function):
    return asyncio.run(coroutine_function())


def test_a_free_slot_lets_the_request_on_in_the_same_step():
    async def scenario():
        gate = Admission(1, hold=30, max_wait=30)
        order: list[str] = []

        async def other():
            order.append("other task")

        asyncio.get_running_loop().call_soon(order.append, "next step")
        task = asyncio.ensure_future(other())
        async with gate.slot():
            order.append("in")
        await task
        return order

    assert _run(scenario)[0] == "in"


def test_requests_are_let_in_one_after_another_in_the_order_they_came():
    async def scenario():
        gate = Admission(2, hold=30, max_wait=30)
        log: list[str] = []

        async def request(name: str):
            async with gate.slot():
                log.append(f"{name} in")
                await asyncio.sleep(0.01)
                log.append(f"{name} out")

        await asyncio.gather(*(request(name) for name in "abcde"))
        return log, gate._free

    log, free = _run(scenario)
    entered = [line[0] for line in log if line.endswith("in")]
    assert entered == list("abcde")
    # Never more than two inside at once.
    inside = 0
    for line in log:
        inside += 1 if line.endswith("in") else -1
        assert inside <= 2
    assert free == 2


def _next_while_one_holds(gate: Admission) -> tuple[list[str], int, int]:
    """A request that holds its slot until the next one is in, and that next one: their log, and
    the gate's free slots and waiters once both are done."""

    async def scenario():
        log: list[str] = []
        holder_done = asyncio.Event()

        async def slow():
            async with gate.slot():
                log.append("slow in")
                await holder_done.wait()
            log.append("slow out")

        async def following():
            await asyncio.sleep(0)  # after the slow one
            async with gate.slot():
                log.append("next in")
            holder_done.set()

        await asyncio.gather(slow(), following())
        return log, gate._free, len(gate._waiting)

    return _run(scenario)


def test_a_slot_held_past_the_hold_goes_to_the_next_request_and_is_not_handed_on_twice():
    log, free, _waiting = _next_while_one_holds(Admission(1, hold=0.02, max_wait=30))

    assert log == ["slow in", "next in", "slow out"]
    assert free == 1  # the slow one's late exit did not hand a second slot on


def test_a_request_that_waited_long_enough_goes_on_without_a_slot():
    log, free, waiting = _next_while_one_holds(Admission(1, hold=30, max_wait=0.02))

    assert log == ["slow in", "next in", "slow out"]
    assert (free, waiting) == (1, 0)  # it took no slot, and gave none back


def test_a_request_that_goes_away_while_waiting_takes_no_slot_with_it():
    async def scenario():
        gate = Admission(1, hold=30, max_wait=30)
        log: list[str] = []
        release_first = asyncio.Event()

        async def first():
            async with gate.slot():
                await release_first.wait()

        async def named(name: str):
            async with gate.slot():
                log.append(name)

        holder = asyncio.ensure_future(first())
        await asyncio.sleep(0)
        gone = asyncio.ensure_future(named("gone"))
        after = asyncio.ensure_future(named("after"))
        await asyncio.sleep(0)
        gone.cancel()
        release_first.set()
        await asyncio.gather(holder, after)
        with pytest.raises(asyncio.CancelledError):
            await gone
        return log, gate._free, len(gate._waiting)

    assert _run(scenario) == (["after"], 1, 0)


def test_a_request_cancelled_once_handed_a_slot_hands_it_on():
    async def scenario():
        gate = Admission(1, hold=30, max_wait=30)
        log: list[str] = []

        async def named(name: str):
            async with gate.slot():
                log.append(name)

        holder = gate.slot()
        await holder.__aenter__()
        handed = asyncio.ensure_future(named("handed"))
        after = asyncio.ensure_future(named("after"))
        await asyncio.sleep(0)
        await holder.__aexit__(None, None, None)  # hands the slot to "handed"…
        handed.cancel()  # …which goes away before it runs
        await after
        with pytest.raises(asyncio.CancelledError):
            await handed
        return log, gate._free

    assert _run(scenario) == (["after"], 1)


def test_no_gate_when_the_slots_setting_is_zero(settings):
    settings.STREAM_ADMISSION_SLOTS = 0

    async def scenario():
        inside = 0
        most = 0

        async def request():
            nonlocal inside, most
            async with admission.stream_start():
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(request() for _ in range(5)))
        return most

    assert _run(scenario) == 5


def test_the_gate_follows_the_settings(settings):
    settings.STREAM_ADMISSION_SLOTS = 3
    settings.STREAM_ADMISSION_HOLD_MS = 7
    settings.STREAM_ADMISSION_MAX_WAIT_MS = 25

    async def scenario():
        async with admission.stream_start():
            gate = admission._gates[asyncio.get_running_loop()]
            return gate.slots, gate.hold, gate.max_wait, gate._free

    assert _run(scenario) == (3, 0.007, 0.025, 2)
