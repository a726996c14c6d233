"""When a streamed model call's request has gone upstream: for the caller that started the call
in a task and has work of its own to do before the first token (an async view's response, a chat
turn's rows), and should do it while the provider works, not before the request leaves.

Work started in a task on the same event loop runs only when the loop gets to it: a view that
went on building its response right after starting a run's task (or a turn that compiled and sent
its rows) held the loop while the run's connection to the provider was being opened, and the
request left a millisecond or two later than it could have, every one of those on the path to the
first token (``bench/stream_fanout.py``). So the caller opens :func:`request_sent_signal` around
the task it starts (tasks take a copy of the context they start in, so every task the run starts in
turn sees the same signal), then awaits :func:`until_request_sent`: the choke point's streamed call
sets the signal once httpcore reports the request's body sent (its ``trace`` extension, which then
takes itself off the request: httpcore would otherwise call it for every event of the response,
every read of a stream's body included). The wait
also ends when the run itself ends or yields, and after ``REQUEST_SENT_WAIT_SECONDS`` in any case:
a new TLS connection to a real provider takes far longer than the caller's work, which then goes
first after all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

REQUEST_SENT_WAIT_SECONDS = 0.01
# Work held back for a streamed run's first event waits this long at most for it, and this much
# more once it is out: in a burst of runs (20 streams at once) the others' first events go out
# before the loop takes a millisecond to build a statement (``bench/stream_fanout.py``).
FIRST_EVENT_HOLD_SECONDS = 0.01
AFTER_FIRST_EVENT_SECONDS = 0.02

_signal: ContextVar[asyncio.Future | None] = ContextVar("llm_request_sent", default=None)


@contextlib.contextmanager
def request_sent_signal(sent: asyncio.Future | None = None) -> Iterator[asyncio.Future]:
    """A future set once the first streamed model call started in this block, or in a task
    created in it, has sent its request (``sent``, or a new one on the running loop)."""
    if sent is None:
        sent = asyncio.get_running_loop().create_future()
    token = _signal.set(sent)
    try:
        yield sent
    finally:
        _signal.reset(token)


class SentTrace:
    """The httpcore ``trace`` extension of one request: sets ``sent`` once the request's body has
    gone, and from then on is no longer the request's trace (see :meth:`watch`)."""

    __slots__ = ("sent", "extensions")

    def __init__(self, sent: asyncio.Future) -> None:
        self.sent = sent
        self.extensions: dict | None = None

    def watch(self, extensions: dict) -> None:
        """The extensions of the request as httpcore reads them (``httpx.Request.extensions``, a
        copy of those it was built with): this trace leaves them once the body has gone."""
        self.extensions = extensions

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if not event.endswith(".send_request_body.complete"):
            return
        if not self.sent.done():
            self.sent.set_result(None)
        if self.extensions is not None and self.extensions.get("trace") is self:
            del self.extensions["trace"]  # httpcore looks it up again for each later event


def trace_for_sent() -> SentTrace | None:
    """The httpcore ``trace`` extension that sets this context's signal, or None when no caller
    waits (or the signal is set already: a retry, a second call of the run)."""
    sent = _signal.get()
    if sent is None or sent.done():
        return None
    return SentTrace(sent)


async def _until_done(future: asyncio.Future, run: asyncio.Future | None, timeout: float) -> None:
    """Return once ``future`` or ``run`` (if given) is done, or ``timeout`` has passed; reads
    neither's result."""
    waited = (future,) if run is None else (future, run)
    if not any(each.done() for each in waited):
        await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)


async def until_request_sent(
    sent: asyncio.Future, run: asyncio.Future | None, *, timeout: float | None = None
) -> None:
    """Return once the request is sent, ``run`` (the task that makes the call, if given) is done,
    or ``timeout`` (default ``REQUEST_SENT_WAIT_SECONDS``) has passed. Reads neither's result:
    their owners do."""
    await _until_done(sent, run, REQUEST_SENT_WAIT_SECONDS if timeout is None else timeout)


async def after_request_sent(*, timeout: float | None = None) -> None:
    """Within a :func:`request_sent_signal` block (or a task started in one): wait until its
    request is sent, up to ``timeout`` (default ``REQUEST_SENT_WAIT_SECONDS``). For work of the
    run itself that can wait for the call (its own row): started in a task beside the call, it
    would otherwise take the loop while the call's connection opens. Outside such a block it
    returns at once."""
    sent = _signal.get()
    if sent is not None:
        await until_request_sent(sent, None, timeout=timeout)


async def after_first_event(first_event: asyncio.Future, run: asyncio.Future | None = None) -> None:
    """Return once a streamed run's first event is out and ``AFTER_FIRST_EVENT_SECONDS`` more have
    passed; at once (with no such wait) when ``run`` (its task) ends first or the event is not out
    within ``FIRST_EVENT_HOLD_SECONDS``. For work that does not need to come before the first
    tokens and takes the loop for a while: writing the run's row, a chat turn's rows."""
    await _until_done(first_event, run, FIRST_EVENT_HOLD_SECONDS)
    if first_event.done():
        await asyncio.sleep(AFTER_FIRST_EVENT_SECONDS)
