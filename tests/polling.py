"""Waiting, in a test, for work that another thread or process does (the fake upstream's counters,
a turn's rows written by the server): poll until it holds. Nothing here asserts how long it took."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

INTERVAL_SECONDS = 0.02


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str | None = None) -> Any:
    """The first truthy value of ``predicate()``; after ``timeout`` its last value, or, when
    ``what`` names what is waited for, an AssertionError that says so."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(INTERVAL_SECONDS)
    if not value and what is not None:
        raise AssertionError(f"timed out waiting for {what}")
    return value


async def await_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """:func:`wait_for` from inside an event loop (the loop goes on meanwhile)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        await asyncio.sleep(INTERVAL_SECONDS)
    return value
