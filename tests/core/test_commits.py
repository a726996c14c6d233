"""``core.commits``: a transaction that skips the WAL flush wait, and only that transaction."""

import pytest
from django.db import connection, transaction

from core.commits import commit_without_flush_wait


def _setting() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_only_the_current_transaction_skips_the_flush_wait():
    before = _setting()
    with transaction.atomic():
        commit_without_flush_wait()
        assert _setting() == "off"
    assert _setting() == before  # SET LOCAL: the connection is as it was


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_changes_nothing():
    commit_without_flush_wait()  # autocommit: nothing to apply it to, and no error
    if connection.vendor == "postgresql":
        assert _setting() == "on"
