"""A bare streaming relay for ``bench/stream_fanout.py``: the floor the /v1 surface is measured
against. It pipes the request body to ``BENCH_RELAY_UPSTREAM`` + ``/chat/completions`` and the
upstream's bytes back, with httpx, under the same server and middleware, and with no database, no
authentication, no choke point. Mounted only when ``BENCH_RELAY_UPSTREAM`` is set (never in
production)."""

from __future__ import annotations

import asyncio
import weakref

import httpx
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        client = _clients[loop] = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0), limits=limits)
    return client


@csrf_exempt
async def relay_chat_completions(request) -> HttpResponse:
    """``POST /v1/_bench/relay/chat/completions``: the upstream's answer, byte for byte."""
    upstream = settings.BENCH_RELAY_UPSTREAM.rstrip("/") + "/chat/completions"
    outgoing = _client().build_request(
        "POST", upstream, content=request.body, headers={"Content-Type": "application/json"}
    )
    response = await _client().send(outgoing, stream=True)

    async def body():
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    return StreamingHttpResponse(
        body(), status=response.status_code, content_type=response.headers.get("content-type")
    )
