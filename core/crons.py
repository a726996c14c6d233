"""Named maintenance jobs ("crons") that apps register and that run three ways: on the Celery beat
schedule (``core.tasks.run_cron``), from the shell (``manage.py run_cron <job>``) and over HTTP
(``POST /api/cron/<job>`` with ``CRON_SECRET``, for platforms whose scheduler calls a URL).

`core` imports no app: each app registers its jobs from ``AppConfig.ready()``::

    register_cron("usage-rollup", usage_rollup_cron, description="Roll usage into hourly buckets.")

A job is a function without arguments returning a JSON-serialisable report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import NotFoundError

logger = logging.getLogger(__name__)

CronFn = Callable[[], Any]


@dataclass(frozen=True)
class Cron:
    name: str
    fn: CronFn
    description: str = ""


_crons: dict[str, Cron] = {}


class UnknownCron(NotFoundError):
    code = "ERR_UNKNOWN_CRON"
    message = "No such cron job."


def register_cron(name: str, fn: CronFn, *, description: str = "") -> CronFn:
    """Make ``fn`` runnable as the cron ``name`` (idempotent for the same function)."""
    existing = _crons.get(name)
    if existing is not None and existing.fn is not fn:
        raise ValueError(f"cron {name!r} is already registered")
    _crons[name] = Cron(
        name=name, fn=fn, description=description or (fn.__doc__ or "").strip().split("\n")[0]
    )
    return fn


def cron_names() -> list[str]:
    return sorted(_crons)


def cron_get(name: str) -> Cron:
    cron = _crons.get(name)
    if cron is None:
        raise UnknownCron(f"No cron job named {name!r}.", details={"known": cron_names()})
    return cron


def run_cron(name: str) -> dict[str, Any]:
    """Run one job now; ``{job, ok, duration_ms, result}`` (its exceptions propagate)."""
    cron = cron_get(name)
    started = time.perf_counter()
    result = cron.fn()
    duration = round((time.perf_counter() - started) * 1000, 1)
    logger.info("cron %s finished in %.1f ms", name, duration)
    return {"job": name, "ok": True, "duration_ms": duration, "result": result}
