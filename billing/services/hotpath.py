"""Hand-written SQL for the statements the cap guard runs on every LLM call.

The ORM spends more CPU compiling an UPDATE with F() expressions than the database spends running
it; around every LLM call that adds up. These helpers issue the same statements as plain SQL with
values prepared by the model fields themselves (so UUIDs, datetimes and JSON are stored exactly as
the ORM would on PostgreSQL and SQLite alike). Everything else in billing uses the ORM.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model

from billing.models import UsageCapCounter, UsageReservation


def _prep(model: type[Model], name: str, value: Any) -> Any:
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def insert_row(model: type[Model], values: dict[str, Any]) -> None:
    """INSERT one row (no RETURNING: callers set their own primary key or do not need it)."""
    columns = [model._meta.get_field(name).column for name in values]
    params = [_prep(model, name, value) for name, value in values.items()]
    placeholders = ", ".join(["%s"] * len(columns))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608 - names from the model
            params,
        )


def lock_counters(pairs: Sequence[tuple[str, datetime]]) -> list[dict[str, Any]]:
    """The window counters of ``(policy_id, window_start)`` pairs, locked in id order."""
    table = UsageCapCounter._meta.db_table
    where = " OR ".join(["(policy_id = %s AND window_start = %s)"] * len(pairs))
    params: list[Any] = []
    for policy_id, window_start in pairs:
        params += [
            _prep(UsageCapCounter, "policy", policy_id),
            _prep(UsageCapCounter, "window_start", window_start),
        ]
    columns = "id, policy_id, used_tokens, used_cost_micros, reserved_tokens, reserved_cost_micros"
    sql = f"SELECT {columns} FROM {table} WHERE {where} ORDER BY id"  # noqa: S608 - names from the model
    if connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [
        {
            "id": row[0],
            "policy_id": str(row[1] if isinstance(row[1], uuid.UUID) else uuid.UUID(str(row[1]))),
            "used_tokens": row[2],
            "used_cost_micros": row[3],
            "reserved_tokens": row[4],
            "reserved_cost_micros": row[5],
        }
        for row in rows
    ]


def add_to_counters(
    ids: Sequence[int],
    *,
    used_tokens: int,
    used_cost: int,
    reserved_tokens: int,
    reserved_cost: int,
    now: datetime,
) -> None:
    """Add (or, with negative numbers, take) amounts on counters already locked by this transaction."""
    table = UsageCapCounter._meta.db_table
    placeholders = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET used_tokens = used_tokens + %s, used_cost_micros = used_cost_micros + %s, "  # noqa: S608
            "reserved_tokens = reserved_tokens + %s, reserved_cost_micros = reserved_cost_micros + %s, "
            f"updated_at = %s WHERE id IN ({placeholders})",
            [
                used_tokens,
                used_cost,
                reserved_tokens,
                reserved_cost,
                _prep(UsageCapCounter, "updated_at", now),
                *ids,
            ],
        )


def reservation_move(reservation_id: str, *, from_status: str, to_status: str, now: datetime | None) -> bool:
    """Conditional UPDATE of a reservation's status; True when this caller moved it."""
    table = UsageReservation._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, settled_at = %s WHERE id = %s AND status = %s",  # noqa: S608
            [
                to_status,
                _prep(UsageReservation, "settled_at", now),
                _prep(UsageReservation, "id", uuid.UUID(str(reservation_id))),
                from_status,
            ],
        )
        return cursor.rowcount == 1
