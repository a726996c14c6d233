"""Django's own middleware, run on the event loop under ASGI instead of a thread hop per hook.

Under an ASGI server Django runs each ``process_request``, ``process_view`` and ``process_response``
of a ``MiddlewareMixin`` middleware through ``sync_to_async``: a round trip to the request's thread
and back to the loop, about a dozen per request for the stock stack. The hooks of these middleware
are a few dictionary and header operations; the trip costs far more than the work. With tens of
requests starting at once (a burst of streams) every trip also waits its turn on a busy loop, and
the response of a stream reached its client only after all of them (``bench/stream_fanout.py``).

Each class here is the stock middleware with its hooks called inline on the loop. The hooks that
may touch the database still take the thread when, and only when, they would: a session that was
changed (or is saved on every request) is saved from the request's thread, and so are messages that
were read or added (the fallback storage may spill into the session). Anything else that reached
the database on the loop would raise Django's ``SynchronousOnlyOperation`` rather than block it.
``settings.MIDDLEWARE`` keeps naming the stock classes (Django's deployment checks look for them by
name); the ASGI application (``config.asgi``, through :class:`InlineMiddlewareHandlerMixin`) loads
these in their place. Under WSGI and in sync tests the stock classes run, unchanged.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.core.handlers.asgi import ASGIHandler
from django.middleware import clickjacking, common, csrf, security


class InlineHooksMixin:
    """Call the hooks of a ``MiddlewareMixin`` inline when the stack is async; put it first."""

    def __init__(self, get_response) -> None:
        super().__init__(get_response)
        if self.async_mode and hasattr(self, "process_view"):
            # Django adapts a sync process_view with sync_to_async; a coroutine function it awaits.
            sync_view = self.process_view

            async def process_view(request, view_func, view_args, view_kwargs):
                return sync_view(request, view_func, view_args, view_kwargs)

            self.process_view = process_view

    def response_needs_thread(self, request, response) -> bool:
        """Whether ``process_response`` may reach the database for this request."""
        return False

    async def __acall__(self, request):
        response = None
        if hasattr(self, "process_request"):
            response = self.process_request(request)
        response = response or await self.get_response(request)
        if hasattr(self, "process_response"):
            if self.response_needs_thread(request, response):
                response = await sync_to_async(self.process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = self.process_response(request, response)
        return response


class SecurityMiddleware(InlineHooksMixin, security.SecurityMiddleware):
    """``django.middleware.security.SecurityMiddleware``, inline."""


class CommonMiddleware(InlineHooksMixin, common.CommonMiddleware):
    """``django.middleware.common.CommonMiddleware``, inline."""


class CsrfViewMiddleware(InlineHooksMixin, csrf.CsrfViewMiddleware):
    """``django.middleware.csrf.CsrfViewMiddleware``, inline (the token lives in a cookie; with
    ``CSRF_USE_SESSIONS`` its hooks read the session, so they keep the thread)."""

    def __init__(self, get_response) -> None:
        if settings.CSRF_USE_SESSIONS:
            csrf.CsrfViewMiddleware.__init__(self, get_response)
            return
        super().__init__(get_response)

    async def __acall__(self, request):
        if settings.CSRF_USE_SESSIONS:
            return await csrf.CsrfViewMiddleware.__acall__(self, request)
        return await super().__acall__(request)


class SessionMiddleware(InlineHooksMixin, sessions.SessionMiddleware):
    """``django.contrib.sessions.middleware.SessionMiddleware``, inline; a session to save is
    saved from the request's thread."""

    def response_needs_thread(self, request, response) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class AuthenticationMiddleware(InlineHooksMixin, auth.AuthenticationMiddleware):
    """``django.contrib.auth.middleware.AuthenticationMiddleware``, inline (``request.user`` stays
    lazy: it is read where the view runs)."""


class MessageMiddleware(InlineHooksMixin, messages.MessageMiddleware):
    """``django.contrib.messages.middleware.MessageMiddleware``, inline; messages that were read or
    added are stored from the request's thread."""

    def response_needs_thread(self, request, response) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class XFrameOptionsMiddleware(InlineHooksMixin, clickjacking.XFrameOptionsMiddleware):
    """``django.middleware.clickjacking.XFrameOptionsMiddleware``, inline."""


# The stock middleware (as settings.MIDDLEWARE names it) and the class loaded in its place under ASGI.
INLINE_EQUIVALENTS = {
    f"{stock.__module__}.{stock.__name__}": f"{__name__}.{stock.__name__}"
    for stock in (
        security.SecurityMiddleware,
        common.CommonMiddleware,
        csrf.CsrfViewMiddleware,
        sessions.SessionMiddleware,
        auth.AuthenticationMiddleware,
        messages.MessageMiddleware,
        clickjacking.XFrameOptionsMiddleware,
    )
}


class InlineMiddlewareHandlerMixin:
    """A Django handler that, building its async middleware chain, loads the inline equivalent of
    each stock middleware ``settings.MIDDLEWARE`` names (once, at start-up)."""

    def load_middleware(self, is_async=False):
        if not is_async:
            return super().load_middleware(is_async=is_async)
        stock = settings.MIDDLEWARE
        settings.MIDDLEWARE = [INLINE_EQUIVALENTS.get(path, path) for path in stock]
        try:
            return super().load_middleware(is_async=True)
        finally:
            settings.MIDDLEWARE = stock


class InlineASGIHandler(InlineMiddlewareHandlerMixin, ASGIHandler):
    """Django's ASGI handler with the inline middleware (``config.asgi``)."""
