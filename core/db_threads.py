"""Running short database steps of async code without queueing behind unrelated sync work.

``sync_to_async`` is thread-sensitive by default: outside a request's own context (a chat turn
detached from its request, a bench or script on one event loop) every such call of the process
runs on ONE shared thread, so twenty concurrent LLM calls wait for each other's spend-cap
reservations and usage records one after another. :func:`run_db` sends the step to a small pool
of threads instead, each of which gives its connection back (to the psycopg pool on PostgreSQL)
after every call, so a long stream holds no connection between its steps.

On a loop that ``async_to_sync`` made for one call (a test, a Celery task, a sync view under
WSGI) the step stays on the caller's thread as before: there it must see the caller's connection
and transaction (a test's rolled-back transaction, a task's atomic block).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import AsyncToSync, sync_to_async
from django.conf import settings
from django.db import close_old_connections

T = TypeVar("T")
logger = logging.getLogger(__name__)

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def on_short_lived_loop() -> bool:
    """True inside a loop that ``async_to_sync`` made for one call (a Celery task, a test, a sync
    view under WSGI); False on a server's own loop, which ``async_to_sync`` reuses from the
    threads of ASGI sync views."""
    return asyncio.get_running_loop() in AsyncToSync.loop_thread_executors


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    max_workers=int(getattr(settings, "DB_STEP_THREADS", 4)), thread_name_prefix="db-step"
                )
    return _executor


_thread = threading.local()


def _call_in_thread(
    values: list[tuple[contextvars.ContextVar, Any]], fn: Callable[..., T], args, kwargs
) -> T:
    # Each pool thread runs its calls in ONE context of its own, so that what asgiref's ``Local``
    # keeps per context (Django's cache connections, among others) lives as long as the thread
    # instead of being made again, with a new Redis connection, on every call. The caller's other
    # context variables (the request context: request id, channel, API key) are set for the call
    # and reset after it.
    context = getattr(_thread, "context", None)
    if context is None:
        context = _thread.context = contextvars.Context()
    return context.run(_apply_and_call, values, fn, args, kwargs)


def _apply_and_call(values, fn, args, kwargs):
    tokens = [(var, var.set(value)) for var, value in values]
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()
        for var, token in reversed(tokens):
            var.reset(token)


async def run_db(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` off the event loop, on a pool thread (see the module docstring)."""
    if on_short_lived_loop():
        return await sync_to_async(fn)(*args, **kwargs)
    values = [
        (var, value)
        for var, value in contextvars.copy_context().items()
        if not var.name.startswith("asgiref.")
    ]
    call = functools.partial(_call_in_thread, values, fn, args, kwargs)
    return await asyncio.get_running_loop().run_in_executor(_pool(), call)


def on_server_loop() -> bool:
    """True on a server's own event loop (not one that ``async_to_sync`` made for one call)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return not on_short_lived_loop()


def detached_context() -> contextvars.Context:
    """A copy of the current context without asgiref's variables: for a task started on the
    server's loop from a view's thread, which must not use that request's sync executors."""
    detached = contextvars.Context()
    for var, value in contextvars.copy_context().items():
        if not var.name.startswith("asgiref."):
            detached.run(var.set, value)
    return detached


def server_loop_of_this_thread() -> asyncio.AbstractEventLoop | None:
    """The server's loop, called from the thread of a sync view that an ASGI server runs (asgiref
    records it there); None anywhere else (a test's or a task's short-lived loop, no server)."""
    from asgiref.sync import SyncToAsync

    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or not loop.is_running() or loop in AsyncToSync.loop_thread_executors:
        return None
    return loop


def submit_db(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Run ``fn`` on the pool and do not wait for it (a refresh nobody waits on); errors are logged."""

    def call() -> None:
        try:
            _call_in_thread([], fn, args, kwargs)
        except Exception:
            logger.exception("a background database step failed")

    _pool().submit(call)


_started: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)


def start_once(key: Any, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Start ``make()`` as a task of the running loop, in a fresh context, unless the task started
    for ``key`` on this loop is still running; nobody awaits it, so its error is logged.

    For work a caller starts and does not wait for (a cache reloaded after the call that found it
    stale): one at a time per key, held here until it ends (the loop holds its tasks weakly), and
    forgotten when it ends in any way, also cancelled before it ran (a test's loop that closed)."""
    loop = asyncio.get_running_loop()
    tasks = _started.get(loop)
    if tasks is None:
        tasks = _started[loop] = {}
    if key in tasks:
        return
    task = tasks[key] = loop.create_task(make(), context=contextvars.Context())

    def ended(task: asyncio.Task) -> None:
        tasks.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background work %r failed", key, exc_info=task.exception())

    task.add_done_callback(ended)


def started(key: Any) -> bool:
    """Whether the task :func:`start_once` started for ``key`` on the running loop is running."""
    return key in _started.get(asyncio.get_running_loop(), {})


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Future]] = (
    weakref.WeakKeyDictionary()
)


async def run_db_shared(key: Any, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """:func:`run_db`, shared by every caller on this loop that asks for the same ``key`` while
    the first call is running: one database read for a burst, not one each.

    A cached row that expires or is invalidated under load (an API key's lookup, the agent a run
    names) is asked for by every request of the burst at the same moment; without this each of
    them would take a pool thread and a connection for the same query. ``key`` must name what
    ``fn(*args, **kwargs)`` returns; a caller that is cancelled does not cancel the others' call,
    and an error reaches every caller of the call that raised it."""
    loop = asyncio.get_running_loop()
    calls = _shared.get(loop)
    if calls is None:
        calls = _shared[loop] = {}
    call = calls.get(key)
    if call is None:
        call = calls[key] = asyncio.ensure_future(run_db(fn, *args, **kwargs))
        call.add_done_callback(lambda done: calls.pop(key, None) if calls.get(key) is done else None)
    return await asyncio.shield(call)
