"""Checks behind /health and /ready, and the broker's queue depth for /metrics."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from functools import cache as memoize
from pathlib import Path

from celery import current_app as celery_app
from django.conf import settings
from django.core.cache import cache
from django.db import connections

STARTED_AT = time.monotonic()


def check_db() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_cache() -> None:
    key = f"health:{uuid.uuid4().hex}"
    cache.set(key, "1", timeout=10)
    if cache.get(key) != "1":
        raise RuntimeError("cache did not return what was stored")
    cache.delete(key)


def check_broker() -> None:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.HEALTH_CHECK_TIMEOUT_SECONDS)


def broker_queue_depth(queue: str | None = None) -> int:
    """Messages waiting in the default Celery queue (Redis, RabbitMQ and filesystem brokers)."""
    queue = queue or celery_app.conf.task_default_queue
    with celery_app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.HEALTH_CHECK_TIMEOUT_SECONDS)
        declared = conn.default_channel.queue_declare(queue=queue, passive=False, durable=True)
        return int(declared.message_count)


def run_check(check: Callable[[], None]) -> dict:
    """Run one check: ``{"status": "ok", "latency_ms"}`` or ``{"status": "error", "error"}``."""
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # any failure is the answer, never a 500
        if check is check_db:
            connections["default"].close_if_unusable_or_obsolete()
        return {"status": "error", "error": type(exc).__name__}
    return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


@memoize
def git_commit() -> str:
    """The deployed commit: GIT_COMMIT, else what git says of the checkout, else 'unknown'."""
    if settings.GIT_COMMIT:
        return settings.GIT_COMMIT
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", "rev-parse", "HEAD"],  # noqa: S607
            cwd=Path(settings.BASE_DIR),
            capture_output=True,
            text=True,
            timeout=2,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def uptime_seconds() -> float:
    return round(time.monotonic() - STARTED_AT, 1)
