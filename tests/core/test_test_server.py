"""The test server harness (``tests.support.asgi_server``): what the wait before each flush of a
transactional test relies on. If the server's connections stopped carrying its
``application_name``, the wait would see none of them and pass at once, and the flush would race
the server's work again."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest
from django.db import connection

from tests.support.asgi_server import run_asgi_server, wait_until_servers_idle

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def _server_backends(name: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT state FROM pg_stat_activity WHERE application_name = %s", [name])
        return [row[0] for row in cursor.fetchall()]


def test_a_servers_connections_carry_its_name_and_the_wait_returns_once_they_are_idle(tmp_path):
    with run_asgi_server(log_dir=tmp_path) as server:
        assert httpx.get(f"{server.base_url}/ready", timeout=10).status_code == 200  # reads the database

        assert server.application_name.startswith("test-asgi-server-")
        assert _server_backends(server.application_name), server.log()

        wait_until_servers_idle(timeout=10)
        assert set(_server_backends(server.application_name)) == {"idle"}


def test_the_wait_lasts_while_a_connection_of_the_server_has_a_transaction_open(tmp_path):
    with run_asgi_server(log_dir=tmp_path) as server:
        # A connection under the server's name, in a transaction until the thread below ends it.
        params = {**connection.get_connection_params(), "application_name": server.application_name}
        params.pop("cursor_factory", None)
        params.pop("context", None)
        busy = psycopg.connect(**params)
        busy.execute("SELECT 1")  # a transaction is open: the state is 'idle in transaction'
        ended = threading.Event()

        def end_it() -> None:
            time.sleep(0.3)  # let the wait start and see it busy
            ended.set()
            busy.commit()

        thread = threading.Thread(target=end_it)
        thread.start()
        try:
            wait_until_servers_idle(timeout=10)
            assert ended.is_set()
        finally:
            thread.join()
            busy.close()
