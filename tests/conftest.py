"""Fixtures shared by the whole suite: the three standing actors (owner, member, outsider) and
clients for them, plus skipping of tests whose service `make test` could not find."""

from __future__ import annotations

import os

import pytest
from rest_framework.test import APIClient

from accounts.models import Role
from tests.factories import MembershipFactory, OrganizationFactory


def _available_services() -> set[str]:
    raw = os.environ.get("TEST_SERVICES")
    if raw is None:  # run outside make test: look at what the settings point at
        services = set()
        if os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql")):
            services.add("postgres")
        if os.environ.get("REDIS_URL"):
            services.add("redis")
        return services
    return {s for s in raw.split(",") if s}


def clear_cache() -> None:
    """Empty this test process's cache, and only its own.

    On Redis ``cache.clear()`` is ``FLUSHDB``: it would also wipe the keys of the other xdist
    workers that share the database, and fail their tests at random. Each worker has its own key
    prefix (``config.settings.test``), so deleting by prefix empties exactly this worker's cache.
    """
    from django.core.cache import cache

    backend = getattr(cache, "_cache", None)
    if backend is None or not hasattr(backend, "get_client"):  # LocMem: per process already
        cache.clear()
        return
    client = backend.get_client(write=True)
    keys = list(client.scan_iter(match=cache.make_key("*"), count=1000))
    if keys:
        client.delete(*keys)


def pytest_collection_modifyitems(config, items):
    available = _available_services()
    for item in items:
        for service in ("postgres", "redis"):
            if item.get_closest_marker(service) and service not in available:
                item.add_marker(pytest.mark.skip(reason=f"needs {service}, which this run does not have"))


@pytest.fixture
def org(db):
    return OrganizationFactory()


@pytest.fixture
def owner(org):
    return MembershipFactory(org=org, role=Role.OWNER).user


@pytest.fixture
def member(org):
    return MembershipFactory(org=org, role=Role.MEMBER).user


@pytest.fixture
def other_org(db):
    return OrganizationFactory()


@pytest.fixture
def outsider(other_org):
    """A member of another org: every row of `org` must answer 404 to them."""
    return MembershipFactory(org=other_org, role=Role.OWNER).user


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user=None)
    client.force_login(user)
    return client


@pytest.fixture
def owner_client(owner):
    return client_for(owner)


@pytest.fixture
def member_client(member):
    return client_for(member)


@pytest.fixture
def outsider_client(outsider):
    return client_for(outsider)


@pytest.fixture
def anon_client():
    return APIClient()


@pytest.fixture(scope="session", autouse=True)
def _loop_writers_closed(django_db_setup):
    """Close the connections that loop writers opened (``core.loop_writer``: a turn on the
    process's background loop keeps one) before the test database is dropped."""
    yield
    from core.loop_writer import close_connections

    close_connections()


@pytest.fixture(autouse=True)
def _servers_idle_before_flush(django_db_blocker):
    """Let the test servers still running (``tests.support.asgi_server``) finish their work before
    pytest-django flushes the database: see ``wait_until_servers_idle``. Autouse fixtures of the
    plugin are set up first, so this one's teardown runs before pytest-django's."""
    yield
    from tests.support.asgi_server import wait_until_servers_idle

    with django_db_blocker.unblock():
        wait_until_servers_idle()


@pytest.fixture(scope="session")
def fake_upstream():
    """The fake OpenAI-compatible upstream (tests/fakes/openai_upstream.py) on a loopback port."""
    from tests.fakes.openai_upstream import FakeUpstream

    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def allow_loopback(settings):
    """Let the outbound guard reach the fake upstream on 127.0.0.1 (as an operator would)."""
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
