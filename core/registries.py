"""Registries that higher apps fill from ``AppConfig.ready()``, so that `core` imports no app."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.models import Job
    from core.services import JobReporter

JobHandler = Callable[["Job", "JobReporter"], Any]
ErrorObserver = Callable[[Any, Exception, int, str], None]

_job_handlers: dict[str, JobHandler] = {}
_error_observers: list[ErrorObserver] = []


def register_job(kind: str) -> Callable[[JobHandler], JobHandler]:
    """Decorator: ``@register_job("knowledge.ingest")`` runs that kind of Job in a worker.

    The handler gets the Job and a reporter (``reporter.progress(percent, message)``) and returns
    the JSON-serialisable result; raising an ``ApplicationError`` fails the job with its code.
    """

    def decorate(handler: JobHandler) -> JobHandler:
        existing = _job_handlers.get(kind)
        if existing is not None and existing is not handler:
            raise ValueError(f"job kind {kind!r} is already registered")
        _job_handlers[kind] = handler
        return handler

    return decorate


def job_handler(kind: str) -> JobHandler | None:
    """The handler registered for ``kind``, if any."""
    return _job_handlers.get(kind)


def job_kinds() -> list[str]:
    return sorted(_job_handlers)


def register_error_observer(observer: ErrorObserver) -> ErrorObserver:
    """Call ``observer(request, exc, status, code)`` for every error answer of the API."""
    if observer not in _error_observers:
        _error_observers.append(observer)
    return observer


def error_observers() -> list[ErrorObserver]:
    return list(_error_observers)
