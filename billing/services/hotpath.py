"""Hand-written SQL for the statements the cap guard runs on every LLM call.

The ORM spends more CPU compiling an UPDATE with F() expressions than the database spends running
it; around every LLM call that adds up. These helpers issue the same statements as plain SQL with
values prepared by the model fields themselves (so UUIDs, datetimes and JSON are stored exactly as
the ORM would on PostgreSQL and SQLite alike). Everything else in billing uses the ORM.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.db import connection
from django.db.models import Model

from billing.models import UsageCapCounter, UsageCapEvent, UsageReservation


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


# --- PostgreSQL: reserve and settle in one statement each ---------------------------------------
#
# On PostgreSQL the whole reserve (lock the counters in id order, check every cap, add the hold,
# insert the reservation and the "allow" event) is ONE statement in its own transaction, and so is
# the settle: one round trip and no Python between the lock and the commit, so a shared cap's row
# is locked for microseconds. ``set_config('synchronous_commit', 'off', true)`` is the statement's
# own ``SET LOCAL`` (see caps._fast_commit). Anything unusual (a counter not created yet, a cap that
# refuses, credits) goes the general way in caps.py, which also names the refusing cap.

_RESERVE_SQL = """
WITH req AS (
    SELECT * FROM unnest(%(policy_ids)s::uuid[], %(window_starts)s::timestamptz[],
                         %(max_tokens)s::bigint[], %(max_costs)s::bigint[])
        AS r(policy_id, window_start, max_tokens, max_cost)
), locked AS (
    SELECT c.id, c.used_tokens + c.reserved_tokens AS t, c.used_cost_micros + c.reserved_cost_micros AS m,
           r.max_tokens, r.max_cost
    FROM {counter} c JOIN req r ON c.policy_id = r.policy_id AND c.window_start = r.window_start
    ORDER BY c.id
    FOR UPDATE OF c
), verdict AS (
    SELECT count(*) AS n,
           coalesce(bool_and((max_tokens IS NULL OR t + %(tokens)s <= max_tokens)
                             AND (max_cost IS NULL OR m + %(cost)s <= max_cost)), true) AS fits,
           coalesce(jsonb_agg(id ORDER BY id), '[]'::jsonb) AS ids
    FROM locked
), go AS (
    SELECT ids FROM verdict WHERE n = %(n)s AND fits
), upd AS (
    UPDATE {counter} SET reserved_tokens = reserved_tokens + %(tokens)s,
                         reserved_cost_micros = reserved_cost_micros + %(cost)s, updated_at = %(now)s
    WHERE id IN (SELECT id FROM locked) AND EXISTS (SELECT 1 FROM go)
    RETURNING 1
), res AS (
    INSERT INTO {reservation} (id, org_id, status, counter_ids, tokens, cost_micros, credit_micros,
                               model, provider_type, request_id, created_at, expires_at)
    SELECT %(id)s, %(org_id)s, 'held', ids, %(tokens)s, %(cost)s, 0, %(model)s, %(provider_type)s,
           %(request_id)s, %(now)s, %(expires_at)s
    FROM go
    RETURNING 1
), ev AS (
    INSERT INTO {event} (org_id, policy_id, decision, reason, model, agent_id, user_id, api_key_id,
                         tokens, cost_micros, created_at)
    SELECT %(org_id)s, %(event_policy_id)s, 'allow', 'reserved', %(model)s, %(agent_id)s, %(user_id)s,
           %(api_key_id)s, %(tokens)s, %(cost)s, %(now)s
    FROM go WHERE %(log_allowed)s
    RETURNING 1
)
SELECT v.n, v.fits, v.ids, (SELECT count(*) FROM res), {commit_mode} FROM verdict v
"""

_SETTLE_SQL = """
WITH prev AS (
    SELECT id, status FROM {reservation}
    WHERE id = %(id)s AND status IN ('held', 'expired')
    FOR UPDATE
), moved AS (
    UPDATE {reservation} r SET status = 'settled', settled_at = %(now)s
    FROM prev WHERE r.id = prev.id
    RETURNING prev.status AS old
), locked AS (
    SELECT id FROM {counter}
    WHERE id = ANY(%(counter_ids)s::bigint[]) AND EXISTS (SELECT 1 FROM prev)
    ORDER BY id
    FOR UPDATE
), upd AS (
    UPDATE {counter} SET
        used_tokens = used_tokens + %(tokens)s,
        used_cost_micros = used_cost_micros + %(cost)s,
        reserved_tokens = reserved_tokens
            - CASE WHEN (SELECT old FROM moved) = 'held' THEN %(held_tokens)s ELSE 0 END,
        reserved_cost_micros = reserved_cost_micros
            - CASE WHEN (SELECT old FROM moved) = 'held' THEN %(held_cost)s ELSE 0 END,
        updated_at = %(now)s
    WHERE id IN (SELECT id FROM locked)
    RETURNING 1
)
SELECT (SELECT old FROM moved), (SELECT count(*) FROM upd), {commit_mode}
"""


def _commit_mode(async_commit: bool) -> str:
    return "set_config('synchronous_commit', 'off', true)" if async_commit else "NULL"


def pg_reserve(
    *,
    reservation_id: uuid.UUID,
    org_id: Any,
    policies: Sequence[tuple[str, datetime, int | None, int | None]],
    tokens: int,
    cost: int,
    call: dict[str, Any],
    now: datetime,
    expires_at: datetime,
    log_allowed: bool,
    async_commit: bool,
    prep_uuid: Any,
) -> tuple[str, list[int]]:
    """Reserve on the counters of ``policies`` (``(policy_id, window_start, max_tokens, max_cost)``,
    highest priority first) in one statement. Returns ``("ok", counter_ids)``; ``("missing", [])``
    when a counter does not exist yet; ``("refused", [])`` when a cap does not fit (nothing held)."""
    sql = _RESERVE_SQL.format(
        counter=UsageCapCounter._meta.db_table,
        reservation=UsageReservation._meta.db_table,
        event=UsageCapEvent._meta.db_table,
        commit_mode=_commit_mode(async_commit),
    )
    params = {
        "policy_ids": [uuid.UUID(str(p[0])) for p in policies],
        "window_starts": [p[1] for p in policies],
        "max_tokens": [p[2] for p in policies],
        "max_costs": [p[3] for p in policies],
        "n": len(policies),
        "tokens": tokens,
        "cost": cost,
        "now": now,
        "expires_at": expires_at,
        "id": reservation_id,
        "org_id": uuid.UUID(str(org_id)),
        "model": str(call.get("model") or "")[:200],
        "provider_type": str(call.get("provider_type") or "")[:32],
        "request_id": str(call.get("request_id") or "")[:128],
        "event_policy_id": uuid.UUID(str(policies[0][0])),
        "agent_id": prep_uuid(call.get("agent_id")),
        "user_id": prep_uuid(call.get("user_id")),
        "api_key_id": prep_uuid(call.get("api_key_id")),
        "log_allowed": log_allowed,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        n, fits, ids, inserted, _ = cursor.fetchone()
    if n < len(policies):
        return "missing", []
    if not fits or not inserted:
        return "refused", []
    return "ok", sorted(int(i) for i in (json.loads(ids) if isinstance(ids, str) else ids))


def pg_settle(
    *,
    reservation_id: str,
    counter_ids: Sequence[int],
    tokens: int,
    cost: int,
    held_tokens: int,
    held_cost: int,
    now: datetime,
    async_commit: bool,
) -> bool:
    """Settle a reservation without credits in one statement; False when it was settled already."""
    sql = _SETTLE_SQL.format(
        counter=UsageCapCounter._meta.db_table,
        reservation=UsageReservation._meta.db_table,
        commit_mode=_commit_mode(async_commit),
    )
    params = {
        "id": uuid.UUID(str(reservation_id)),
        "counter_ids": sorted(int(i) for i in counter_ids),
        "tokens": tokens,
        "cost": cost,
        "held_tokens": held_tokens,
        "held_cost": held_cost,
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        old, _, _ = cursor.fetchone()
    return old is not None
