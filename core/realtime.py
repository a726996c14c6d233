"""Publish and follow realtime events through one helper that hides which channel layer is in use.

With Redis (production) a publish reaches every process at once. With the in-memory layer (the
embedded default) it reaches only the publishing process, so followers also re-read the database
every ``STREAM_POLL_SECONDS``: the database stays the source of truth, the push only wakes them up.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

EVENT_TYPE = "realtime.event"


def pushes_across_processes() -> bool:
    """True when a publish in a worker reaches a stream served by a web process."""
    layer = get_channel_layer()
    return layer is not None and not isinstance(layer, InMemoryChannelLayer)


def follow_interval() -> float:
    """How long a follower waits for a push before it re-reads the database anyway."""
    if pushes_across_processes():
        return settings.SSE_KEEPALIVE_SECONDS
    return settings.STREAM_POLL_SECONDS


async def apublish(group: str, event: dict[str, Any]) -> None:
    """Send an event to every follower of ``group``; a layer outage is logged, never raised."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(group, {"type": EVENT_TYPE, "event": event})
    except Exception:  # realtime is best effort: followers re-read the database anyway
        logger.warning("realtime publish to %s failed", group, exc_info=True)


def publish(group: str, event: dict[str, Any]) -> None:
    """Sync flavour of :func:`apublish`, for services and Celery tasks."""
    async_to_sync(apublish)(group, event)


async def _apublish_many(events: list[tuple[str, dict[str, Any]]]) -> None:
    for group, event in events:
        await apublish(group, event)


def publish_many_on_commit(events: list[tuple[str, dict[str, Any]]]) -> None:
    """:func:`publish_on_commit` of many ``(group, event)`` pairs with one hop to the event loop
    (a bulk worker finishing a batch of jobs: one hop each cost more than the jobs' UPDATE)."""
    if events:
        transaction.on_commit(lambda: async_to_sync(_apublish_many)(events))


def publish_on_commit(group: str, event: dict[str, Any]) -> None:
    """Publish once the surrounding transaction commits, so followers read committed rows."""
    transaction.on_commit(lambda: publish(group, event))


class Subscription:
    """``async with Subscription(group) as sub: event = await sub.next(timeout)``.

    By default the subscription receives on a process-specific channel of the layer (channels_redis
    multiplexes those over one blocking pop per process), inside :meth:`next`. A wait that times
    out cancels that pop, and redis-py drops a connection whose command was cancelled mid-reply:
    the next wait opens a new one, its connect and handshake on the event loop. For a follower that
    waits for the next event of a live stream that is rare; a subscriber that mostly waits in vain,
    several times a second (the chat turns' control watcher), asks for ``dedicated=True``: a plain
    channel of its own, received by a task of its own for as long as the subscription is open, so
    that a wait that times out touches no connection. It holds one Redis connection meanwhile, and
    shares no receive state with other loops of the process (channels_redis lets one loop at a
    time receive on process-specific channels)."""

    READ_RETRY_SECONDS = 1.0

    def __init__(self, group: str, *, dedicated: bool = False) -> None:
        self.group = group
        self.layer = get_channel_layer()
        self.dedicated = dedicated
        self.channel: str | None = None
        self._inbox: asyncio.Queue[dict[str, Any] | None] | None = None
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Subscription:
        if self.layer is not None:
            if self.dedicated:
                self.channel = f"realtime.{uuid.uuid4().hex}"
            else:
                self.channel = await self.layer.new_channel()
            await self.layer.group_add(self.group, self.channel)
            if self.dedicated:
                self._inbox = asyncio.Queue()
                self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self.layer is not None and self.channel is not None:
            try:
                await self.layer.group_discard(self.group, self.channel)
            except Exception:
                logger.debug("group_discard failed for %s", self.group, exc_info=True)

    async def _read(self) -> None:
        """A dedicated subscription's receiving, until it closes; a layer outage is logged and
        retried (its waits answer None meanwhile)."""
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("realtime receive on %s failed", self.group, exc_info=True)
                await asyncio.sleep(self.READ_RETRY_SECONDS)
                continue
            self._inbox.put_nowait(message.get("event"))

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next published event, or None after ``timeout`` seconds without one."""
        if self.layer is None or self.channel is None:
            await asyncio.sleep(timeout)
            return None
        if self._inbox is not None:
            try:
                async with asyncio.timeout(timeout):
                    return await self._inbox.get()
            except TimeoutError:
                return None
        started = asyncio.get_running_loop().time()
        try:
            # A timeout scope, not wait_for: a follower in another process waits here once per
            # event of its stream, and wait_for runs each wait as a task of its own.
            async with asyncio.timeout(timeout):
                message = await self.layer.receive(self.channel)
        except TimeoutError:
            return None
        except Exception:  # a layer outage degrades the follower to polling, never kills it
            logger.warning("realtime receive on %s failed", self.group, exc_info=True)
            remaining = timeout - (asyncio.get_running_loop().time() - started)
            await asyncio.sleep(max(0.0, remaining))
            return None
        return message.get("event")
