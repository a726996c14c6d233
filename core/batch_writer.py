"""Group the small writes of concurrent requests into one transaction, written by one thread.

Tens of requests that each insert a handful of rows at the same moment (chat turns opening their
conversations, under a burst of streams) each pay a transaction, a statement per row and the
ORM's work for each, on threads that contend for the GIL with the event loop that serves every
open stream. A :class:`BatchWriter` takes their items from a queue and writes whatever has queued
up while it was busy in one call of ``write_many`` (one transaction, one statement per table):
nothing waits for a batch to fill, so one request alone is written at once, and a burst is written
in a few batches. Every caller waits for the commit of its own item (:meth:`BatchWriter.write`)
or awaits it (:meth:`BatchWriter.submit` and ``asyncio.wrap_future``).

A batch that fails is written again one item at a time (``write_one``), so that a bad item fails
alone, with its own error, and the others are still written.

The writer thread holds one database connection of its own, checked (``close_old_connections``)
around every batch like a request's; a caller waiting in :meth:`BatchWriter.write` gives its own
back meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)

T = TypeVar("T")


class BatchWriter(Generic[T]):
    """One daemon thread writing queued items in batches of up to ``max_batch``."""

    def __init__(
        self,
        name: str,
        write_many: Callable[[list[T]], None],
        write_one: Callable[[T], None],
        *,
        max_batch: int = 100,
    ) -> None:
        self.name = name
        self._write_many = write_many
        self._write_one = write_one
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[T, Future]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, item: T) -> Future:
        """Queue ``item``; the future resolves (None, or the item's own error) once it is written."""
        future: Future = Future()
        self._queue.put((item, future))
        self._ensure_thread()
        return future

    def write(self, item: T) -> None:
        """Queue ``item`` and wait until it is committed; raises the error of its own write.

        The caller gives its database connection back while it waits (unless it is inside a
        transaction): the writer takes one from the same pool, and a burst of callers each
        sitting on one could hold every connection the writer needs until the pool's timeout.
        """
        _release_connections()
        self.submit(item).result()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _take(self) -> list[tuple[T, Future]]:
        batch = [self._queue.get()]
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            close_old_connections()
            try:
                self._write_batch(batch)
            finally:
                close_old_connections()

    def _write_batch(self, batch: list[tuple[T, Future]]) -> None:
        if len(batch) > 1:
            try:
                self._write_many([item for item, _ in batch])
            except Exception:
                logger.info("%s: a batch of %d failed; writing its items one by one", self.name, len(batch))
            else:
                for _, future in batch:
                    future.set_result(None)
                return
        for item, future in batch:
            try:
                self._write_one(item)
            except BaseException as exc:  # the caller gets its own error, the thread goes on
                future.set_exception(exc)
            else:
                future.set_result(None)


def _release_connections() -> None:
    """Close this thread's connections that no transaction is using (with a pool: give them back)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()
