"""New rows of several models inserted by one statement.

Some writes sit on the path to a stream's first token: a chat turn that opens a conversation
inserts the conversation, its audit row, two messages, the first event and the run (five tables)
before its client may see the message's id. As ``bulk_create`` calls in a transaction that is
seven round trips (BEGIN, one INSERT per table, COMMIT), each paying the ORM's bookkeeping and,
on a writer thread, a wait for the GIL the event loop holds while it serves every open stream:
measured under ``bench/stream_fanout.py`` at one stream, 9-10 ms for one turn's rows, longer than
the model took to send its first token.

On PostgreSQL :func:`insert_rows` sends them as one statement, each table's INSERT a
data-modifying CTE (``WITH a AS (INSERT …), b AS (INSERT …) SELECT …``): one round trip, and
atomic on its own (all rows or none; foreign keys, which Django makes ``DEFERRABLE INITIALLY
DEFERRED``, are checked at the end of the statement, when every row of it is there).
``async_commit`` makes its commit skip the wait for the WAL flush, as
:func:`core.commits.commit_without_flush_wait` does for a transaction (only when the statement is
its own transaction: a caller's transaction keeps its own durability). Each INSERT is compiled by
Django's own compiler, so field defaults, ``auto_now_add`` and value conversion are exactly those
of ``bulk_create``. Elsewhere (SQLite) the rows are inserted by ``bulk_create`` in one transaction.

Unlike ``bulk_create``, an auto-incremented primary key is not read back: such rows keep
``pk = None``. Rows are marked saved (``_state.adding = False``) either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import AutoField, Model
from django.db.models.sql import InsertQuery

RowGroup = tuple[type[Model], Sequence[Model]]


def _insert_sql(model: type[Model], objs: Sequence[Model], using: str) -> tuple[str, list[Any]]:
    """``INSERT INTO … VALUES …`` of ``objs``, as ``bulk_create`` would send it (no RETURNING)."""
    model._default_manager.db_manager(using).all()._prepare_for_bulk_create(list(objs))
    fields = [f for f in model._meta.concrete_fields if not f.generated]
    if any(not obj._is_pk_set() for obj in objs):
        if any(obj._is_pk_set() for obj in objs):
            raise ValueError(f"{model.__name__}: rows with and without a primary key in one group.")
        fields = [f for f in fields if not isinstance(f, AutoField)]
    query = InsertQuery(model)
    query.insert_values(fields, list(objs), raw=False)
    [(sql, params)] = query.get_compiler(using=using).as_sql()
    return sql, list(params)


def rows_statement(
    groups: Sequence[RowGroup], *, async_commit: bool = False, using: str = DEFAULT_DB_ALIAS
) -> tuple[str, list[Any]]:
    """The one PostgreSQL statement that inserts every group's rows (see the module doc)."""
    parts: list[str] = []
    params: list[Any] = []
    if async_commit:
        parts.append("commit_mode AS (SELECT set_config('synchronous_commit', 'off', true))")
    for number, (model, objs) in enumerate(groups):
        if not objs:
            continue
        sql, values = _insert_sql(model, objs, using)
        parts.append(f"rows_{number} AS ({sql})")
        params.extend(values)
    if not parts:
        return "", []
    # A CTE that only reads runs when the statement reads it; the INSERTs always run.
    tail = "SELECT 1 FROM commit_mode" if async_commit else "SELECT 1"
    return f"WITH {', '.join(parts)} {tail}", params


def mark_saved(groups: Sequence[RowGroup], using: str = DEFAULT_DB_ALIAS) -> None:
    """Mark the rows of ``groups`` as saved in ``using`` (``bulk_create`` does it to its rows)."""
    for _model, objs in groups:
        for obj in objs:
            obj._state.adding = False
            obj._state.db = using


def insert_rows(
    groups: Sequence[RowGroup], *, async_commit: bool = False, using: str = DEFAULT_DB_ALIAS
) -> None:
    """Insert every group's new rows, all or none, in one statement on PostgreSQL (see the module
    doc); in the caller's transaction when there is one."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        with transaction.atomic(using=using):
            for model, objs in groups:
                if objs:
                    model._default_manager.db_manager(using).bulk_create(list(objs))
        return
    sql, params = rows_statement(
        groups, async_commit=async_commit and not connection.in_atomic_block, using=using
    )
    if sql:
        with server_binding_cursor(connection) as cursor:
            cursor.execute(sql, params)
    mark_saved(groups, using)


def server_binding_cursor(connection):
    """A cursor of Django's (query logging, execute wrappers) that sends the values apart from
    the statement, as Django does with ``OPTIONS["server_side_binding"]``: Django's default
    client-side cursor quotes every value into the SQL text, which for a batch of a hundred rows
    was most of the writer's CPU time."""
    from django.db.backends.postgresql.base import ServerBindingCursor

    connection.ensure_connection()
    return connection._prepare_cursor(ServerBindingCursor(connection.connection))
