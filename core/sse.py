"""Server-sent events: framing, keep-alives, and the streaming response every SSE endpoint returns."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer

from core import metrics


def sse_frame(data: Any, *, event: str | None = None, event_id: int | str | None = None) -> str:
    """One SSE frame: optional ``id:`` and ``event:`` lines, then the JSON ``data:``."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event:
        lines.append(f"event: {event}")
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), default=str)
    lines.extend(f"data: {part}" for part in payload.split("\n"))
    return "\n".join(lines) + "\n\n"


KEEPALIVE = ": keepalive\n\n"


async def _counted(kind: str, frames: AsyncIterator[str]) -> AsyncIterator[bytes]:
    # Bytes, encoded here: Django encodes a str part with the response's charset, which it finds
    # by parsing the Content-Type header again for every part (every token of a stream).
    metrics.STREAMS_OPEN.labels(kind).inc()
    try:
        async for frame in frames:
            yield frame.encode()
    finally:
        metrics.STREAMS_OPEN.labels(kind).dec()


def sse_response(frames: AsyncIterator[str], *, kind: str) -> StreamingHttpResponse:
    """Stream ``frames`` as text/event-stream; proxies are told not to buffer it."""
    response = StreamingHttpResponse(_counted(kind, frames), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


class EventStreamRenderer(BaseRenderer):
    """Lets DRF content negotiation accept ``Accept: text/event-stream`` on SSE views."""

    media_type = "text/event-stream"
    format = "sse"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes | str) else json.dumps(data)
