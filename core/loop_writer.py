"""New rows inserted from a server's event loop, over a PostgreSQL connection the loop owns.

Under a server, a write on the path to a stream's first token (the rows of a chat turn that opens
a conversation, an agent run's row) went to a writer thread (``core.batch_writer``). That thread
contends for the GIL with the event loop, which at the same moment builds and sends the turn's
upstream call: each waited for the other at every switch, and in ``bench/stream_fanout.py`` at one
stream a turn's one-statement write (``core.row_inserts``) still took 8-10 ms from its submission
to its commit, the upstream call's first token 2-5 ms longer than the bare relay's. Here the
statement is compiled on the loop and sent on an ``AsyncConnection`` of psycopg: the loop goes on
with the upstream call while PostgreSQL works, and no thread is woken.

A :class:`LoopRowWriter` has one task per loop that writes one statement at a time; items that
arrive while one is in flight go together in the next (up to ``max_batch``): one item alone is
written at once, a burst in a few statements. The task lives as long as its loop: a loop that
ends by cancelling its tasks (``asyncio.run`` does) closes the connection with it. A statement
that fails is sent again one item at a time, so that a bad item fails alone, with its own error,
and the others are still written. A caller that is cancelled does not take its item back: the
item is written, as a thread's would be.

Woken by a write, the task first lets the loop's ready tasks run (``yield_first``): a run that
saves its row as its model call starts gets the call out before the statement is compiled. A
writer whose callers have let their own work go first already (a chat turn's opening rows are
written once its request has left, ``agents.llm.sent``) passes ``yield_first=False``: in that pass
the loop read the upstream's answer first. At one stream a turn's statement started 1.5 ms after
its request had left, and starts 0.8 ms after it without that pass (and with the task waiting in a
timeout scope rather than ``wait_for``, which woke it through a task of its own).

The statement goes with PostgreSQL's own ``$n`` placeholders (:func:`native_placeholders`, once
per statement text) on psycopg's raw cursor: psycopg parses a ``%s`` statement of more than 50
parameters again on every call (it caches only smaller ones), which was half a millisecond on the
loop for a chat turn's opening rows.

The connection is opened on the first write with the ``DATABASES`` settings Django's own
connections use (and their ``assume_role``), in autocommit: each statement is its own transaction.
When the server has ended it (a restart, an idle timeout), the statement is sent again once on a
new connection. One idle for ``IDLE_CLOSE_SECONDS`` is closed: an idle process holds none.

Elsewhere (SQLite, a sync caller's short-lived loop) :meth:`LoopRowWriter.write` hands the item to
its ``fallback`` :class:`~core.batch_writer.BatchWriter`, which writes it on its thread as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg import sql as pgsql

from core.batch_writer import BatchWriter
from core.db_threads import on_server_loop
from core.row_inserts import RowGroup, mark_saved, rows_statement

logger = logging.getLogger(__name__)

T = TypeVar("T")

IDLE_CLOSE_SECONDS = 30.0
_writers: weakref.WeakSet[LoopRowWriter] = weakref.WeakSet()
_PERCENT = re.compile(r"%(.)", re.DOTALL)


@functools.lru_cache(maxsize=512)
def native_placeholders(sql: str) -> str:
    """``sql`` as Django writes it for psycopg (``%s`` placeholders, ``%%`` for a percent sign)
    with PostgreSQL's numbered ``$1, $2, …`` instead, for a raw cursor."""
    numbers = iter(range(1, sql.count("%s") + 1))

    def replace(match: re.Match) -> str:
        if match.group(1) == "%":
            return "%"
        if match.group(1) == "s":
            return f"${next(numbers)}"
        raise ValueError(f"Unsupported placeholder %{match.group(1)} in {sql[:200]!r}")

    return _PERCENT.sub(replace, sql)


@dataclass
class _LoopState:
    queue: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    inflight: list[tuple[Any, asyncio.Future]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    connection: Any = None  # psycopg.AsyncConnection


class LoopRowWriter(Generic[T]):
    """Writes items' rows (``groups_of(items)``) from the event loop; see the module doc."""

    def __init__(
        self,
        name: str,
        groups_of: Callable[[list[T]], Sequence[RowGroup]],
        *,
        fallback: BatchWriter[T],
        async_commit: Callable[[], bool] = lambda: False,
        max_batch: int = 100,
        using: str = DEFAULT_DB_ALIAS,
        yield_first: bool = True,
    ) -> None:
        self.name = name
        self._yield_first = yield_first
        self._groups_of = groups_of
        self._fallback = fallback
        self._async_commit = async_commit
        self._max_batch = max_batch
        self._using = using
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        _writers.add(self)

    def on_loop(self) -> bool:
        """Whether :meth:`write` writes on the running loop (a server's, on PostgreSQL)."""
        return connections[self._using].vendor == "postgresql" and on_server_loop()

    async def write(self, item: T) -> None:
        """Return once ``item``'s rows are committed; raises the error of its own write."""
        if not self.on_loop():
            await asyncio.wrap_future(self._fallback.submit(item))
            return
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None or state.task is None or state.task.done():
            state = self._states[loop] = _LoopState()
            # One task per loop, for the loop's life: a loop that ends cancels it (asyncio.run
            # does), and it closes its connection then.
            state.task = loop.create_task(self._serve(state), context=contextvars.Context())
        future = loop.create_future()
        state.queue.append((item, future))
        state.wake.set()
        await asyncio.shield(future)

    async def aclose(self) -> None:
        """Stop the running loop's writer and close its connection."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None and state.task is not None:
            state.task.cancel()
            await asyncio.gather(state.task, return_exceptions=True)

    # -- the loop's writer ----------------------------------------------------------------------

    async def _serve(self, state: _LoopState) -> None:
        try:
            while True:
                if state.connection is None:
                    await state.wake.wait()
                else:
                    try:  # a timeout scope: wait_for would wake this task through a task of its own
                        async with asyncio.timeout(IDLE_CLOSE_SECONDS):
                            await state.wake.wait()
                    except TimeoutError:  # an idle process holds no connection
                        await _close(state)
                        continue
                state.wake.clear()
                # Let the tasks that are ready run first (``yield_first``): the caller's own work
                # (a run's upstream call) goes out before the statement is compiled, and what they
                # submit meanwhile joins it.
                if self._yield_first:
                    await asyncio.sleep(0)
                while state.queue:
                    state.inflight = state.queue[: self._max_batch]
                    state.queue = state.queue[self._max_batch :]
                    await self._write_batch(state, state.inflight)
                    state.inflight = []
        finally:
            for _, future in state.inflight + state.queue:
                _settle(future, RuntimeError(f"{self.name}: the loop's writer stopped."))
            state.inflight, state.queue = [], []
            await _close(state)

    async def _write_batch(self, state: _LoopState, batch: list[tuple[T, asyncio.Future]]) -> None:
        if len(batch) > 1:
            try:
                await self._execute(state, [item for item, _ in batch])
            except Exception:
                logger.info("%s: a batch of %d failed; writing its items one by one", self.name, len(batch))
            else:
                for _, future in batch:
                    _settle(future, None)
                return
        for item, future in batch:
            try:
                await self._execute(state, [item])
            except Exception as exc:  # the caller gets its own error, the writer goes on
                _settle(future, exc)
            else:
                _settle(future, None)

    async def _execute(self, state: _LoopState, items: list[T]) -> None:
        groups = self._groups_of(items)
        sql, params = rows_statement(groups, async_commit=self._async_commit(), using=self._using)
        if sql:
            # Errors as Django's own (IntegrityError, OperationalError…), as the thread raises them.
            with connections[self._using].wrap_database_errors:
                await self._send(state, sql, params)
        mark_saved(groups, self._using)

    async def _send(self, state: _LoopState, sql: str, params: list[Any]) -> None:
        sql = native_placeholders(sql)
        connection = await self._connection(state)
        try:
            await connection.execute(sql, params)
        except psycopg.OperationalError:
            if not connection.broken:
                raise
            # The server ended the connection (a restart, an idle timeout) before or while it was
            # used: once more on a new one.
            logger.info("%s: its connection broke; writing again on a new one", self.name)
            await _close(state)
            connection = await self._connection(state)
            await connection.execute(sql, params)

    async def _connection(self, state: _LoopState):
        connection = state.connection
        if connection is not None and (connection.closed or connection.broken):
            await _close(state)
            connection = None
        if connection is not None:
            return connection
        wrapper = connections[self._using]
        params = wrapper.get_connection_params()  # Django's own (adapters, options); no I/O
        params.pop("cursor_factory", None)
        # Server-side binding, with $n placeholders: the values go apart from the statement, not
        # quoted into it one by one as Django's client-side cursors do (0.6 ms for a turn's rows).
        connection = await psycopg.AsyncConnection.connect(
            **params, autocommit=True, cursor_factory=psycopg.AsyncRawCursor
        )
        role = wrapper.settings_dict["OPTIONS"].get("assume_role")
        if role:
            await connection.execute(pgsql.SQL("SET ROLE {}").format(pgsql.Identifier(role)))
        state.connection = connection
        return connection


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def _close(state: _LoopState) -> None:
    connection, state.connection = state.connection, None
    if connection is not None:
        try:
            await connection.close()
        except Exception:  # already broken: nothing more to release
            logger.debug("closing a loop writer's connection failed", exc_info=True)


def close_connections(timeout: float = 5.0) -> None:
    """Close every loop writer's connection, from a thread that runs no loop: the connection of a
    loop that runs in another thread is closed on that loop, one whose loop has stopped is
    dropped at once. For the end of a process (a test session, before its database is dropped)."""
    for writer in list(_writers):
        for loop, state in list(writer._states.items()):
            if state.connection is None:
                continue
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(_close(state), loop).result(timeout)
            else:
                connection, state.connection = state.connection, None
                connection.pgconn.finish()
