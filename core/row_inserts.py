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

The SQL of an INSERT depends only on its shape (the model, its columns, the number of rows), not on
the values, unless a value is an expression or a field picks its placeholder per value. Compiling
it was most of the statement's cost (about 1 ms of a chat turn's opening rows, on the event loop,
on the path to the turn's first token): each shape's SQL and the layout of its parameters (row
after row, or one array per column for PostgreSQL's ``UNNEST``) are learned from Django's compiler
the first time, and later rows of that shape only have their values prepared, by the same
compiler methods (``pre_save_val``, ``prepare_value``) ``as_sql`` calls.

A group of fewer than ``UNNEST_MIN_ROWS`` rows goes as multi-row ``VALUES``, not as Django's
PostgreSQL ``UNNEST`` of one array per column: psycopg dumps each array parameter in Python, element
by element, and a chat turn's two messages (23 columns) cost 0.6 ms of the event loop's time at
every execution, against a few microseconds for the same values as plain parameters. UNNEST is
there to spare PostgreSQL the planning of many rows; a few rows have little to plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MethodType
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import AutoField, Model
from django.db.models.sql import InsertQuery
from django.db.models.sql.compiler import SQLInsertCompiler

RowGroup = tuple[type[Model], Sequence[Model]]


SHAPES_KEPT = 512  # shapes are a model and a row count: a few per writer and batch size
UNNEST_MIN_ROWS = 5  # smaller groups go as multi-row VALUES (see the module doc)


@dataclass(frozen=True)
class _Shape:
    """The SQL of one INSERT shape, and whether its parameters are one array per column."""

    sql: str
    by_column: bool

    def params(self, value_rows: list[list[Any]]) -> list[Any]:
        if self.by_column:
            return [list(column) for column in zip(*value_rows, strict=True)]
        return [value for row in value_rows for value in row]


# (model, columns, rows, database) → its shape, or None for one compiled every time.
_shapes: dict[tuple, _Shape | None] = {}


def _value_rows(compiler, fields: list, objs: list[Model]) -> list[list[Any]] | None:
    """Each row's values as ``as_sql`` prepares them; None when one is an expression (the SQL
    depends on it)."""
    rows = [[compiler.prepare_value(f, compiler.pre_save_val(f, obj)) for f in fields] for obj in objs]
    if any(hasattr(value, "as_sql") for row in rows for value in row):
        return None
    return rows


def _learn(key: tuple, fields: list, rows: int, sql: str, params: Sequence[Any]) -> None:
    """Remember the shape of a statement Django compiled (see the module doc)."""
    shape = None
    if not any(hasattr(f, "get_placeholder") for f in fields):
        if len(params) == len(fields) * rows:
            shape = _Shape(sql, by_column=False)
        elif rows > 1 and len(params) == len(fields):
            shape = _Shape(sql, by_column=True)
    if len(_shapes) >= SHAPES_KEPT:
        _shapes.clear()
    _shapes[key] = shape


def _insert_sql(model: type[Model], objs: Sequence[Model], using: str) -> tuple[str, list[Any]]:
    """``INSERT INTO … VALUES …`` of ``objs``, as ``bulk_create`` would send it (no RETURNING)."""
    objs = list(objs)
    model._default_manager.db_manager(using).all()._prepare_for_bulk_create(objs)
    fields = [f for f in model._meta.concrete_fields if not f.generated]
    if any(not obj._is_pk_set() for obj in objs):
        if any(obj._is_pk_set() for obj in objs):
            raise ValueError(f"{model.__name__}: rows with and without a primary key in one group.")
        fields = [f for f in fields if not isinstance(f, AutoField)]
    query = InsertQuery(model)
    query.insert_values(fields, objs, raw=False)
    compiler = query.get_compiler(using=using)
    if len(objs) < UNNEST_MIN_ROWS:
        # The base compiler's VALUES, not its PostgreSQL subclass's UNNEST (see the module doc).
        compiler.assemble_as_sql = MethodType(SQLInsertCompiler.assemble_as_sql, compiler)
    key = (model, tuple(f.attname for f in fields), len(objs), using)
    shape = _shapes.get(key, ...)
    if shape is None:  # a shape that is always compiled
        [(sql, params)] = compiler.as_sql()
        return sql, list(params)
    rows = _value_rows(compiler, fields, objs)
    if rows is not None and shape is not ...:
        return shape.sql, shape.params(rows)
    # New, or an expression among the values: Django compiles it (and prepares the values once
    # more; only times set by pre_save change, and the row keeps the ones it is inserted with).
    [(sql, params)] = compiler.as_sql()
    if rows is not None:
        _learn(key, fields, len(objs), sql, params)
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
