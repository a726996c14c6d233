"""Django's own middleware runs its hooks on the event loop under ASGI (``core.middleware.inline``)
and still takes the request's thread where a hook reaches the database."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.contrib.sessions.models import Session
from django.middleware import clickjacking, common, csrf, security
from django.test import AsyncClient as StockAsyncClient
from django.test import Client
from django.test.client import AsyncClientHandler
from django.utils.module_loading import import_string

from core.middleware import inline

pytestmark = pytest.mark.django_db

STOCK_HOOKS = [
    (security.SecurityMiddleware, "process_request"),
    (security.SecurityMiddleware, "process_response"),
    (common.CommonMiddleware, "process_request"),
    (common.CommonMiddleware, "process_response"),
    (csrf.CsrfViewMiddleware, "process_request"),
    (csrf.CsrfViewMiddleware, "process_view"),
    (csrf.CsrfViewMiddleware, "process_response"),
    (sessions.SessionMiddleware, "process_request"),
    (sessions.SessionMiddleware, "process_response"),
    (auth.AuthenticationMiddleware, "process_request"),
    (messages.MessageMiddleware, "process_request"),
    (messages.MessageMiddleware, "process_response"),
    (clickjacking.XFrameOptionsMiddleware, "process_response"),
]


def _spy(monkeypatch, threads: dict) -> None:
    for cls, name in STOCK_HOOKS:
        original = getattr(cls, name)

        def hook(self, *args, _original=original, _key=(cls.__name__, name), **kwargs):
            threads.setdefault(_key, set()).add(threading.get_ident())
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, hook)


class InlineClientHandler(inline.InlineMiddlewareHandlerMixin, AsyncClientHandler):
    """The test client's async handler, loading its middleware as config.asgi's handler does."""


def AsyncClient(**kwargs):  # noqa: N802 - stands in for django.test.AsyncClient
    client = StockAsyncClient(**kwargs)
    client.handler = InlineClientHandler(enforce_csrf_checks=kwargs.get("enforce_csrf_checks", False))
    return client


def _closure_get_response(function):
    """The next link of a function-style middleware (allauth's), from its closure."""
    code = getattr(function, "__code__", None)
    if code is None or "get_response" not in code.co_freevars:
        return None
    return function.__closure__[code.co_freevars.index("get_response")].cell_contents


def _chain_classes(handler) -> set:
    chain, loaded = handler._middleware_chain, set()
    while chain is not None:  # the chain's links, outermost first
        chain = getattr(chain, "__wrapped__", chain)  # Django's exception-to-response wrapper
        loaded.add(type(chain))
        chain = getattr(chain, "get_response", None) or _closure_get_response(chain)
    return loaded


def test_settings_name_the_stock_classes_and_the_asgi_app_loads_the_inline_ones():
    from config.asgi import django_asgi_app

    loaded = _chain_classes(django_asgi_app)
    for cls, _hook in STOCK_HOOKS:
        stock = f"{cls.__module__}.{cls.__name__}"
        assert stock in settings.MIDDLEWARE  # what Django's deployment checks look for
        equivalent = import_string(inline.INLINE_EQUIVALENTS[stock])
        assert issubclass(equivalent, cls)
        assert equivalent in loaded
        assert cls not in loaded


def test_under_asgi_every_hook_runs_on_the_loop_not_in_the_request_thread(monkeypatch):
    threads: dict = {}
    _spy(monkeypatch, threads)
    test_thread = threading.get_ident()  # async_to_sync's thread-sensitive calls come back here
    client = AsyncClient()

    response = async_to_sync(client.get)("/api/v1/_test/csrf-post")

    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"  # the hooks did their work
    assert response["X-Content-Type-Options"] == "nosniff"
    ran = set(threads)
    assert ran == {(cls.__name__, name) for cls, name in STOCK_HOOKS}
    for key, idents in threads.items():
        assert test_thread not in idents, f"{key} hopped to the request's thread"


def test_a_changed_session_and_its_messages_are_saved_from_the_request_thread(monkeypatch):
    threads: dict = {}
    _spy(monkeypatch, threads)
    test_thread = threading.get_ident()
    client = AsyncClient()

    written = async_to_sync(client.get)("/api/v1/_test/session-write?note=kept")

    assert written.status_code == 200
    assert test_thread in threads[("SessionMiddleware", "process_response")]  # saved off the loop
    assert test_thread in threads[("MessageMiddleware", "process_response")]
    session_key = written.cookies[settings.SESSION_COOKIE_NAME].value
    assert Session.objects.get(session_key=session_key).get_decoded()["note"] == "kept"
    read = async_to_sync(client.get)("/api/v1/_test/session-read")
    assert read.content == b"kept|saved"


def test_csrf_is_still_enforced_under_asgi():
    client = AsyncClient(enforce_csrf_checks=True)

    refused = async_to_sync(client.post)("/api/v1/_test/csrf-post")
    cookie = async_to_sync(client.get)("/api/v1/_test/csrf-cookie").cookies[settings.CSRF_COOKIE_NAME].value
    accepted = async_to_sync(client.post)("/api/v1/_test/csrf-post", headers={"X-CSRFToken": cookie})

    assert refused.status_code == 403
    assert accepted.status_code == 200
    assert accepted.content == b"posted"


def test_with_csrf_in_the_session_its_hooks_keep_the_thread(settings, monkeypatch):
    settings.CSRF_USE_SESSIONS = True
    threads: dict = {}
    _spy(monkeypatch, threads)
    test_thread = threading.get_ident()
    client = AsyncClient(enforce_csrf_checks=True)

    assert async_to_sync(client.get)("/api/v1/_test/csrf-cookie").status_code == 200
    refused = async_to_sync(client.post)("/api/v1/_test/csrf-post")

    assert refused.status_code == 403
    assert test_thread in threads[("CsrfViewMiddleware", "process_request")]
    assert test_thread in threads[("CsrfViewMiddleware", "process_view")]


def test_the_sync_stack_is_the_stock_one():
    client = Client()
    written = client.get("/api/v1/_test/session-write?note=sync")
    read = client.get("/api/v1/_test/session-read")

    assert written.status_code == 200
    assert read.content == b"sync|saved"
