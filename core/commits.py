"""Transactions that need not wait for their commit to reach the disk.

On PostgreSQL a commit waits for the write-ahead log to be flushed (``synchronous_commit``); on a
busy disk that is most of a short transaction's time. For rows whose loss in a database crash is
tolerable for the last fraction of a second, and which something else repairs or supersedes (a
chat turn's log, rebuilt counters), :func:`commit_without_flush_wait` turns the wait off for the
current transaction only. What other sessions see is unchanged: the rows are visible as soon as
the commit returns; only their durability against a crash of the database server is deferred by
at most three ``wal_writer_delay`` periods (600 ms by default). Elsewhere it does nothing.
"""

from __future__ import annotations

from django.db import connection


def commit_without_flush_wait() -> None:
    """Inside ``transaction.atomic``: the commit of this transaction does not wait for the WAL
    flush (PostgreSQL ``SET LOCAL synchronous_commit TO OFF``)."""
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
