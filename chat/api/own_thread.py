"""Sync DRF views on the path to a stream's first token, run in a worker thread of their own.

Under an ASGI server Django runs every sync view in one thread that the whole process shares with
every thread-sensitive ``sync_to_async`` call (the database work of agent runs, usage settlement,
…). A view that starts a stream sits on the path to its first token: with tens or hundreds of
streams starting at once, each would wait behind the others' views and database work there. Views
with :class:`OwnThreadMixin` run in a pool thread instead (their thread-sensitive calls, such as an
``async_to_sync`` → ``sync_to_async`` round trip, come back to that same thread), and give their
database connection back when they return. The pool is their own (``VIEW_THREADS``), not the
loop's default executor, which has only ``cpu_count + 4`` threads: with 20 streams starting at
once on two cores, most requests waited there for a thread before authenticating. Their work is
mostly waiting on Redis and the database, which releases the GIL. Called from sync code (tests,
WSGI) they run in the caller's thread and on its connection (and test transaction), as any view
does.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django import db

from agents.llm import on_short_lived_loop

VIEW_THREADS = 16
_executor: ThreadPoolExecutor | None = None


def _view_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=VIEW_THREADS, thread_name_prefix="stream-view")
    return _executor


class OwnThreadMixin:
    """See the module doc; put it first in the bases of an ``APIView``."""

    @classmethod
    def as_view(cls, **initkwargs):
        view = super().as_view(**initkwargs)

        def run(request, *args, **kwargs):
            try:
                response = view(request, *args, **kwargs)
                if hasattr(response, "render"):
                    response.render()
                return response
            finally:
                db.close_old_connections()

        async def async_view(request, *args, **kwargs):
            if on_short_lived_loop():  # a sync caller: its thread, its connection (and test transaction)
                return await sync_to_async(view)(request, *args, **kwargs)
            in_own_thread = sync_to_async(run, thread_sensitive=False, executor=_view_executor())
            return await in_own_thread(request, *args, **kwargs)

        for name in ("cls", "initkwargs", "csrf_exempt"):
            setattr(async_view, name, getattr(view, name))
        return async_view
