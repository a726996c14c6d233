"""A real ASGI server (Daphne, in a subprocess) against the pytest-django test database, and an
SSE reader for it.

Tests that use it must run with ``django_db(transaction=True)``: the server is another process and
only sees committed rows. Sign in by creating a session in the test (``Client.force_login``) and
handing its cookie to the HTTP client; the server shares ``SECRET_KEY`` and the database with the
test process, so it accepts that session.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings
from django.db import connection
from django.test import Client

BASE_DIR = Path(settings.BASE_DIR)

# Variables of the test process that must not leak into the server: it gets its own below.
_SCRUBBED = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "STREAM_POLL_SECONDS", "SSE_KEEPALIVE_SECONDS")


def test_database_url() -> str:
    """DATABASE_URL of the database this test run uses (the test database, not the real one)."""
    db = connection.settings_dict
    engine = db["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        name = str(db["NAME"])
        if name == ":memory:" or name.startswith("file:"):
            raise RuntimeError("a server in another process cannot share an in-memory SQLite database")
        return f"sqlite:///{Path(name).resolve()}"
    if engine == "django.db.backends.postgresql":
        user = quote(db.get("USER") or "", safe="")
        password = quote(db.get("PASSWORD") or "", safe="")
        credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
        host = db.get("HOST") or "127.0.0.1"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{credentials}{host}{port}/{quote(db['NAME'], safe='')}"
    raise RuntimeError(f"no DATABASE_URL for database engine {engine}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AsgiServer:
    """A running Daphne: its base URL, its log for failure messages, and the ``application_name``
    its database connections carry (``wait_until_servers_idle``)."""

    base_url: str
    process: subprocess.Popen
    log_path: Path
    application_name: str = ""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# The servers this process has running: their work must end before a test's database is flushed.
_running: list[AsgiServer] = []


@contextmanager
def run_asgi_server(
    *,
    log_dir: Path,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[AsgiServer]:
    """Start ``daphne config.asgi:application`` on a free loopback port; stop it on exit.

    Without ``redis_url`` the server runs the embedded default (in-memory channel layer, streams
    follow jobs by reading the database); with it, the Redis channel layer pushes events to it.
    """
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.test",
        DATABASE_URL=test_database_url(),
        SECRET_KEY=settings.SECRET_KEY,
        VAR_DIR=str(settings.VAR_DIR),
        PYTHONUNBUFFERED="1",
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra_env or {})

    log_path = log_dir / "daphne.log"
    # libpq reads PGAPPNAME: every connection of the server (Django's, the loop writer's) says whose
    # it is in pg_stat_activity.
    application_name = env["PGAPPNAME"] = f"test-asgi-server-{os.getpid()}-{time.monotonic_ns()}"
    last_error: Exception | None = None
    for _attempt in range(3):  # another process may take the free port before Daphne binds it
        port = free_port()
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "config.asgi:application",
                ],
                cwd=BASE_DIR,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        server = AsgiServer(
            base_url=f"http://127.0.0.1:{port}",
            process=process,
            log_path=log_path,
            application_name=application_name,
        )
        try:
            _wait_until_ready(server, startup_timeout)
        except Exception as exc:
            _stop(process)
            last_error = exc
            continue
        _running.append(server)
        try:
            yield server
        finally:
            _running.remove(server)
            _stop(process)
        return
    raise RuntimeError(f"Daphne did not start: {last_error}\n--- server log ---\n{server.log()}")


def wait_until_servers_idle(*, quiet_checks: int = 4, interval: float = 0.025, timeout: float = 10.0) -> None:
    """Return once no running server has had a statement or a transaction open in the database
    for ``quiet_checks`` checks in a row (bounded by ``timeout``).

    A server goes on working after a response has ended: a stream's usage is settled after its
    last frame, a stale cache is refreshed after the request that found it. The flush that ends a
    transactional test truncates every table; a server statement that holds a lock on one table
    while it waits for another that the flush holds is a deadlock, and PostgreSQL may end the
    flush to break it, which fails the test. Several checks in a row bridge the gaps between the
    statements of one piece of work.
    """
    names = [server.application_name for server in _running if server.process.poll() is None]
    if not names or connection.vendor != "postgresql":
        return
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < quiet_checks and time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY(%s) AND state <> 'idle'",
                [names],
            )
            busy = cursor.fetchone()[0]
        quiet = 0 if busy else quiet + 1
        if quiet < quiet_checks:
            time.sleep(interval)  # waiting for another process's work, not asserting timing


def _wait_until_ready(server: AsgiServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"Daphne exited with status {server.process.returncode}")
        try:
            if httpx.get(f"{server.base_url}/ready", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # waiting for another process to start, not asserting timing
    raise TimeoutError(f"Daphne was not ready within {timeout}s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def session_cookies(user) -> dict[str, str]:
    """A real session for ``user`` (committed, so the server sees it), as request cookies."""
    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


# --- Server-sent events ------------------------------------------------------------------------

CLOSED = object()


@dataclass
class SseEvent:
    event: str | None
    id: str | None
    data: Any


@dataclass
class SseStream:
    """An open event stream read by a background thread; every wait here is bounded."""

    response: httpx.Response
    events: queue.Queue = field(default_factory=queue.Queue)
    comments: list[str] = field(default_factory=list)
    error: BaseException | None = None
    keepalive: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)

    def next_event(self, timeout: float = 10.0) -> SseEvent:
        """The next event; fails when none arrives within ``timeout`` or the stream ended."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event within {timeout}s") from None
        if item is CLOSED:
            raise AssertionError(f"the stream closed instead of sending an event ({self.error!r})")
        return item

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Wait for the server to end the stream; fails on a further event or a timeout."""
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the stream was still open after {timeout}s") from None
        assert item is CLOSED, f"expected the stream to close, got another event: {item}"
        assert self.error is None, f"the stream ended with an error: {self.error!r}"

    def wait_keepalive(self, timeout: float = 30.0) -> None:
        """Wait for a keep-alive comment: proof that the stream lived through an idle wait."""
        deadline = time.monotonic() + timeout
        while not self.keepalive.wait(0.05):
            if self.closed.is_set():
                raise AssertionError(f"the stream closed while idle ({self.error!r})")
            if time.monotonic() > deadline:
                raise AssertionError(f"no keep-alive within {timeout}s")

    def _read(self) -> None:
        fields: dict[str, list[str]] = {}
        try:
            for line in self.response.iter_lines():
                if line == "":
                    if "data" in fields or "event" in fields:
                        data = "\n".join(fields.get("data", []))
                        self.events.put(
                            SseEvent(
                                event=(fields.get("event") or [None])[-1],
                                id=(fields.get("id") or [None])[-1],
                                data=json.loads(data) if data else None,
                            )
                        )
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    self.keepalive.set()
                else:
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(value.removeprefix(" "))
        except Exception as exc:  # closed under us at teardown, or a malformed frame
            self.error = exc
        finally:
            self.closed.set()
            self.events.put(CLOSED)


@contextmanager
def open_event_stream(
    url: str, *, cookies: dict[str, str], read_timeout: float = 120.0
) -> Iterator[SseStream]:
    """GET ``url`` as ``text/event-stream``; asserts a 200 event stream and yields its reader."""
    timeout = httpx.Timeout(10.0, read=read_timeout)
    with (
        httpx.Client(cookies=cookies, timeout=timeout) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as response,
    ):
        if response.status_code != 200:
            response.read()
            raise AssertionError(f"stream answered {response.status_code}: {response.text}")
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = SseStream(response=response)
        reader = threading.Thread(target=stream._read, name="sse-reader", daemon=True)
        reader.start()
        try:
            yield stream
        finally:
            _shutdown_socket(response)  # wakes the reader: closing alone leaves its recv() blocked
            reader.join(timeout=10)


def _shutdown_socket(response: httpx.Response) -> None:
    network_stream = response.extensions.get("network_stream")
    sock = network_stream.get_extra_info("socket") if network_stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed by the server
