"""Structured logging: JSON lines carrying the request id of the request that logged them."""

from __future__ import annotations

import logging

from pythonjsonlogger.json import JsonFormatter as _BaseJsonFormatter

from core.context import current_request_id


class RequestContextFilter(logging.Filter):
    """Adds ``request_id`` to every record, so a 500's traceback can be found from its answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class JsonFormatter(_BaseJsonFormatter):
    """One JSON object per line with stable key names (``ts``, ``level``, ``logger``, ``msg``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault(
            "rename_fields", {"asctime": "ts", "levelname": "level", "name": "logger", "message": "msg"}
        )
        super().__init__(*args, **kwargs)
