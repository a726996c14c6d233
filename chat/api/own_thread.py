"""DRF views on the path to a stream's first token: on the event loop when they can, else in a
worker thread of their own.

A view class that defines ``loop_serializer_class`` and ``async def loop_post(request, data)``
serves the requests it can settle without blocking on the server's loop, with no thread at all:
API-key authentication through ``accounts.loop_auth``, then DRF's own ``initial`` (negotiation,
permissions, throttles: nothing there reads the database once the key is known) and the handler,
given the body as the serializer validated it, which answers the response or None. The body is
parsed and validated while the key's cache read is on its way to Redis and back (it needs nothing
the key decides), but used only once the key is settled; a UTF-8 JSON body is read straight from
its bytes (:func:`_json_body`), and the first renderer is taken without DRF's negotiation when any
would do (:meth:`OwnThreadMixin.perform_content_negotiation`), both as DRF would decide. Anything
else (no settled key, a refusal, an invalid body, a request the handler leaves to the thread) runs
the view as below, which answers errors exactly as before, in DRF's order (authentication before
the body); nothing has been written or started on the loop by then. That work on the loop is let in
through ``core.admission``, a few requests at a time in arrival order, so that in a burst the first
streams' calls leave (and their first tokens go out) before the later requests' work is done.

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

import asyncio
import functools
import json
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django import db
from django.core.exceptions import ImproperlyConfigured

from agents.llm import on_short_lived_loop
from core import admission

VIEW_THREADS = 16
_executor: ThreadPoolExecutor | None = None


def _view_executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=VIEW_THREADS, thread_name_prefix="stream-view")
    return _executor


def _json_body(request, drf_request):
    """The request's body as the view's ``JSONParser`` reads it (``drf_request.data``): straight
    from the bytes for a UTF-8 JSON body, the body every client of these views sends. DRF's way
    there picks the parser, wraps the body in a decoding reader and parses from that: from the
    request's parsing to its serializer, 0.22 ms of the loop's CPU for every stream that starts,
    in place, and 0.11 ms this way. A body that does not parse raises DRF's ``ParseError``; any
    other content type or charset, or a view without DRF's own ``JSONParser``, goes DRF's way.
    ``drf_request.data`` still parses the body for whoever reads it."""
    from rest_framework.exceptions import ParseError
    from rest_framework.parsers import JSONParser

    charset = (request.content_params or {}).get("charset", "utf-8").lower()
    if (
        request.content_type != "application/json"
        or charset not in ("utf-8", "utf8")
        or not any(type(parser) is JSONParser for parser in drf_request.parsers)
    ):
        return drf_request.data
    try:
        return _json_decoder().decode(request.body.decode("utf-8"))
    except ValueError as exc:  # not UTF-8, not JSON
        raise ParseError(f"JSON parse error - {exc}") from exc


@functools.cache
def _json_decoder() -> json.JSONDecoder:
    """The decoder of DRF's ``JSONParser``: strict (no NaN or Infinity) unless DRF's
    ``STRICT_JSON`` is off."""
    from rest_framework.parsers import JSONParser
    from rest_framework.utils.json import strict_constant

    return json.JSONDecoder(parse_constant=strict_constant if JSONParser.strict else None)


async def _on_loop(cls, initkwargs: dict, request, args, kwargs):
    """The response of ``cls.loop_post`` for ``request`` served on the loop, or None (see the
    module doc)."""
    from rest_framework.exceptions import APIException

    from accounts import loop_auth
    from core import aredis
    from core.errors import ApplicationError

    authenticating = asyncio.ensure_future(loop_auth.aauthenticate(request, cls))
    await asyncio.sleep(0)  # the key's cache read goes out; the body is read while it travels
    self = cls(**initkwargs)
    self.setup(request, *args, **kwargs)
    self.args, self.kwargs = args, kwargs
    drf_request = self.initialize_request(request, *args, **kwargs)
    try:
        body = cls.loop_serializer_class(data=_json_body(request, drf_request))
        data = body.validated_data if body.is_valid() else None
    except APIException:  # a body that does not parse: the thread answers it, after the key
        data = None
    finally:
        key = await authenticating  # always awaited: it counted the request against the key's limit
    if key is None or data is None:
        return None
    aredis.adopt_reads(getattr(request, "cache_reads", None))  # e.g. the agents' cache generation
    self.request = drf_request
    self.headers = self.default_response_headers
    loop_auth.bind(drf_request, key)
    try:
        self.initial(drf_request, *args, **kwargs)
        response = await self.loop_post(drf_request, data, *args, **kwargs)
    except (APIException, ApplicationError):
        return None  # the thread answers it, as it answers any other refusal
    if response is None:
        return None
    return self.finalize_response(drf_request, response, *args, **kwargs)


# What a client that takes the first renderer's answer sends (OpenAI's SDKs send the media type).
_ANY = ("", "*/*")


class OwnThreadMixin:
    """See the module doc; put it first in the bases of an ``APIView``."""

    def perform_content_negotiation(self, request, force=False):
        """DRF's negotiation, except for the requests every client of these views makes: no format
        override (suffix or query) and an ``Accept`` that any renderer, or exactly the first one,
        satisfies. DRF picks the first renderer and its media type for those too, after parsing
        the query string and the header into media types on the loop, for every stream that
        starts: half of ``initial``'s CPU there (0.13 ms, now 0.07, in place)."""
        accept = request.META.get("HTTP_ACCEPT", "").strip()
        if getattr(self, "format_kwarg", None) is None and not request.META.get("QUERY_STRING"):
            renderer = self.get_renderers()[0]
            if accept in _ANY or accept == renderer.media_type:
                return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    @classmethod
    def as_view(cls, **initkwargs):
        view = super().as_view(**initkwargs)
        on_loop = hasattr(cls, "loop_post")
        if on_loop and getattr(cls, "loop_serializer_class", None) is None:
            raise ImproperlyConfigured(f"{cls.__name__} defines loop_post but no loop_serializer_class.")

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
            if on_loop and request.method == "POST":
                async with admission.stream_start():  # in arrival order (core.admission)
                    response = await _on_loop(cls, initkwargs, request, args, kwargs)
                if response is not None:
                    return response
            in_own_thread = sync_to_async(run, thread_sensitive=False, executor=_view_executor())
            return await in_own_thread(request, *args, **kwargs)

        for name in ("cls", "initkwargs", "csrf_exempt"):
            setattr(async_view, name, getattr(view, name))
        return async_view
