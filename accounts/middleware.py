"""Middleware of `accounts`: the per-key request log (``GET /api/v1/api-keys/{id}/usage``).

Every request that authenticated with an API key leaves one ``ApiKeyUsage`` row: method, path,
status, duration, client IP and request id. It is the innermost middleware, so it sees the key that
DRF's authentication put on the Django request (``request.api_key``) and times the view itself.
Requests without a key pay one attribute lookup.

How the row is written depends on the stack, because the costs differ:

- sync (tests, WSGI, ``manage.py runserver``): one INSERT after the view, on the request's own
  persistent connection, so the row is there as soon as the answer is;
- async (Daphne): Django opens a fresh database connection for every request there, and an INSERT
  that commits on it was measured to cost more than the whole key check (with SQLite, closing the
  last connection also checkpoints the WAL on every request). So the row is queued in memory and
  a single writer thread inserts the queue in batches every ``FLUSH_SECONDS`` (sooner when
  ``BATCH_SIZE`` rows wait) on its own long-lived connection; the event loop never waits for the
  database, and no request pays for the write. Rows appear within about half a second; the queue
  is flushed at interpreter exit, and it is bounded (``MAX_PENDING``): past that, rows are dropped
  and counted rather than growing memory without limit. ``bench/auth_overhead.py`` has figures.

A failed write is logged and never turns an answer into an error.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from typing import Any

from django.db import connection
from django.utils import timezone

from accounts.models import ApiKey
from accounts.services.keys import api_key_usage_record, api_key_usage_record_many
from core import context
from core.middleware.base import HybridMiddleware

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
BATCH_SIZE = 500
MAX_PENDING = 50_000


def _row(request, response, started: float, key: ApiKey) -> dict[str, Any]:
    """The log row of one keyed request, as keyword arguments of the usage services."""
    ctx = context.current()
    request_id = getattr(request, "request_id", "") or (ctx.request_id if ctx.request_id != "-" else "")
    return {
        "at": timezone.now(),
        "key_id": key.pk,
        "method": request.method or "",
        "path": request.path,
        "status": response.status_code,
        "duration_ms": (time.perf_counter() - started) * 1000,
        "ip": ctx.ip,
        "request_id": request_id,
    }


class UsageWriter:
    """Queues usage rows of async requests and inserts them in batches from one daemon thread."""

    def __init__(
        self,
        *,
        flush_seconds: float = FLUSH_SECONDS,
        batch_size: int = BATCH_SIZE,
        max_pending: int = MAX_PENDING,
        autostart: bool = True,
    ) -> None:
        self.flush_seconds = flush_seconds
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.autostart = autostart  # tests flush by hand instead
        self.dropped = 0
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, row: dict[str, Any]) -> None:
        """Queue one row (called on the event loop: no I/O, no waiting)."""
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append(row)
            full = len(self._pending) >= self.batch_size
            if self.autostart and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="api-key-usage-writer", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write everything queued so far; returns the number of rows written."""
        with self._flush_lock:
            with self._lock:
                rows, self._pending = self._pending, []
            if not rows:
                return 0
            try:
                return api_key_usage_record_many(rows=rows)
            except Exception:
                logger.exception("could not write %d API key usage rows", len(rows))
                connection.close()  # a broken connection is reopened on the next flush
                return 0

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()


usage_writer = UsageWriter()
atexit.register(usage_writer.flush)


def _record_now(request, response, started: float) -> None:
    """Sync stacks: write the row of a keyed request at once (no-op for other requests)."""
    key = getattr(request, "api_key", None)
    if not isinstance(key, ApiKey):
        return
    try:
        api_key_usage_record(**_row(request, response, started, key))
    except Exception:  # the log must never break the answer it describes
        logger.exception("could not record API key usage for key %s", key.pk)


class ApiKeyUsageMiddleware(HybridMiddleware):
    """Records each request made with an API key, after the view has answered."""

    def handle(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        _record_now(request, response, started)
        return response

    async def ahandle(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        key = getattr(request, "api_key", None)
        if isinstance(key, ApiKey):
            usage_writer.add(_row(request, response, started, key))
        return response
