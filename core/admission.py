"""Requests that start streams, let in to their work before the model call in the order they came,
a few at a time (``STREAM_ADMISSION_SLOTS``).

A stream's own work before its model call (the key's check, the body, the run, the call's
request) is a millisecond or two of the loop's CPU, done in steps: a request goes as far as its
first wait (the key's read from Redis), and the loop takes the next request's step before it comes
back. When tens of streams start at once (a client opening 20 completions together), every request
takes each step before any takes the next: the first request's call leaves only once the last
request has done nearly all of its own work, and the upstream's first tokens then wait behind what
is left of it. Every stream of the burst waited for the whole burst (``bench/stream_fanout.py``, 20
streams at once: 10-16 ms from the upstream's first delta to the client, 2-5 ms with this gate).

Here a request does that work holding one of a few slots, which it hands on, in arrival order,
once its call has left (its view has answered) or after ``STREAM_ADMISSION_HOLD_MS`` in any case
(a request that waits on the database for a key whose cached entry expired, or on a new TLS
connection to its provider, does not hold the others up for long). The first requests' calls
leave first and their first tokens go out while later ones are still being let in, and the work
is the same: at 20 streams at once /v1 raw's median first token came 1.31x as much later than the
direct path's as the bare relay's did, and 0.8-1.2x with the gate. A request that finds a slot
free goes on at once, in the same step of the loop.

No request waits longer than ``STREAM_ADMISSION_MAX_WAIT_MS``: one that has waited that long goes
on beside the slots' holders. In a burst of hundreds the streams let in first are streaming while
the later ones wait, and their tokens take the loop too: held in line however long, the p95 first
token of a burst of 200 came twice as late as with no gate (1.08 -> 2.05 s), and with this bound
as late as with none (1.17-1.22 s), the median's gain at 20 streams kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import weakref
from collections.abc import AsyncIterator

from django.conf import settings

from core.metrics import STREAM_ADMISSION_WAIT


class Admission:
    """``slots`` slots of one event loop, each held for ``hold`` seconds at most, waited for
    ``max_wait`` seconds at most."""

    def __init__(self, slots: int, hold: float, max_wait: float) -> None:
        self.slots = slots
        self.hold = hold
        self.max_wait = max_wait
        self._free = slots
        self._waiting: collections.deque[asyncio.Future] = collections.deque()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block, or until ``hold`` has passed; wait for one first when all
        are held (behind the requests that came before)."""
        loop = asyncio.get_running_loop()
        if self._free and not self._waiting:
            self._free -= 1
            STREAM_ADMISSION_WAIT.observe(0)
            held = True
        else:
            began = time.monotonic()
            granted = loop.create_future()
            self._waiting.append(granted)
            waited_enough = loop.call_later(self.max_wait, self._let_in_without_slot, granted)
            try:
                held = await granted
            except asyncio.CancelledError:  # the client went away meanwhile
                if granted.cancelled():
                    with contextlib.suppress(ValueError):  # a hand-on may have dropped it already
                        self._waiting.remove(granted)
                elif granted.result():  # handed a slot in the same step: it goes to the next one
                    self._hand_on()
                raise
            finally:
                waited_enough.cancel()
            STREAM_ADMISSION_WAIT.observe(time.monotonic() - began)
        if not held:  # let in after max_wait, beside the slots' holders
            yield
            return

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._hand_on()

        expiry = loop.call_later(self.hold, release)
        try:
            yield
        finally:
            expiry.cancel()
            release()

    def _hand_on(self) -> None:
        while self._waiting:
            granted = self._waiting.popleft()
            if not granted.done():
                granted.set_result(True)
                return
        self._free += 1

    def _let_in_without_slot(self, granted: asyncio.Future) -> None:
        if not granted.done():
            self._waiting.remove(granted)
            granted.set_result(False)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Admission] = weakref.WeakKeyDictionary()


def stream_start() -> contextlib.AbstractAsyncContextManager[None]:
    """A slot of the running loop's gate for the block (see the module doc); no gate at all when
    ``STREAM_ADMISSION_SLOTS`` is 0."""
    slots = settings.STREAM_ADMISSION_SLOTS
    if slots <= 0:
        return contextlib.nullcontext()
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    hold = settings.STREAM_ADMISSION_HOLD_MS / 1000
    max_wait = settings.STREAM_ADMISSION_MAX_WAIT_MS / 1000
    if gate is None or (gate.slots, gate.hold, gate.max_wait) != (slots, hold, max_wait):
        gate = _gates[loop] = Admission(slots, hold, max_wait)
    return gate.slot()
