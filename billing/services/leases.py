"""Spend-cap leases: a process reserves room for several calls at once and hands it out from memory.

Reserving per call means a database round trip before every LLM call, and an org-wide cap is one
counter row that every call of the org locks: at twenty calls at once they queue on that row and
on the event loop that waits for them. With a lease, the first call under a set of caps reserves
``USAGE_CAP_LEASE_CALLS`` times its worst case in ONE reservation row (the same statement as a
per-call reserve, so the cap is checked the same way); the next calls take their worst case from
the lease in memory, with no I/O, and give back what they did not use when they settle. A thread
flushes the settled spend (used up, and converted out of the lease's hold) to the counters and the
reservation every ``USAGE_CAP_LEASE_FLUSH_SECONDS``, writes the calls' "allow" events, renews the
lease, and returns it when it has been idle for ``USAGE_CAP_LEASE_IDLE_SECONDS``, its window ended
or the caps changed.

Why the caps still hold: everything a call may spend is covered by a hold in the counters before
the call starts, exactly as with a per-call reservation; the lease only decides in memory which
call uses which part of a hold that is already there. Near a cap no lease fits (it needs room for
all its calls), and calls fall back to per-call reservations. If the process dies, its lease row
expires (``USAGE_CAP_LEASE_EXPIRY_SECONDS``, renewed by every flush) and reconcile-budgets rebuilds
the counters from the usage records, as for any reservation of a dead worker. The cost: another
process may see the cap reached while this one holds unused room, at most one lease per process
and set of caps, until it is returned.

Only on PostgreSQL (the one-statement reserve), for calls not paid with credits.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from billing.models import UsageCapCounter, UsageCapEvent, UsageReservation
from billing.selectors.state import PolicyView
from billing.services import hotpath

logger = logging.getLogger(__name__)


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


def leases_enabled() -> bool:
    return (
        int(_setting("USAGE_CAP_LEASE_CALLS", 8)) > 1
        and settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
    )


@dataclass(eq=False)
class Lease:
    """Room for several calls under one set of caps, held by one reservation row."""

    org_id: str
    key: tuple[tuple[str, datetime], ...]
    limits: tuple[tuple[int | None, int | None], ...]
    reservation_id: uuid.UUID
    counter_ids: list[int]
    window_end: datetime
    calls: int  # room for this many calls' worst cases
    held_tokens: int  # what the reservation row holds, less conversions not flushed yet
    held_cost: int
    free_tokens: int  # of the hold, what no call has taken
    free_cost: int
    in_flight: int = 0
    pending_used_tokens: int = 0  # settled spend not in the counters yet
    pending_used_cost: int = 0
    pending_converted_tokens: int = 0  # hold turned into spend, not yet taken off the counters
    pending_converted_cost: int = 0
    events: list[tuple] = field(default_factory=list)
    retired: bool = False
    returned: bool = False
    last_used: float = field(default_factory=time.monotonic)
    renewed: float = field(default_factory=time.monotonic)


_lock = threading.Lock()  # the lease tables and counts (held only for memory work)
_flush_lock = threading.Lock()  # one flush pass at a time (held during its database work)
_leases: dict[tuple, Lease] = {}  # the lease new calls take from, per set of caps
_draining: list[Lease] = []  # retired leases waiting for their calls to settle
_flusher: threading.Thread | None = None
_wake = threading.Event()


def _key(matching: list[PolicyView], now: datetime) -> tuple[tuple[tuple[str, datetime], ...], datetime]:
    from billing.services.usage import window_bounds

    bounds = [window_bounds(p.window, now) for p in matching]
    return tuple((p.id, b[0]) for p, b in zip(matching, bounds, strict=True)), min(b[1] for b in bounds)


def _limits(matching: list[PolicyView]) -> tuple[tuple[int | None, int | None], ...]:
    return tuple((p.max_tokens, p.max_cost_micros) for p in matching)


def _event(org_id: str, call: dict, policy_id: str, tokens: int, cost: int, now: datetime) -> tuple:
    """What the allow event needs, kept light on the event loop; the flusher builds the rows."""
    return (org_id, policy_id, call.get("model"), call.get("agent_id"), call.get("user_id"),
            call.get("api_key_id"), tokens, cost, now)  # fmt: skip


def _event_row(event: tuple) -> UsageCapEvent:
    from billing.services.usage import _uuid

    org_id, policy_id, model, agent_id, user_id, api_key_id, tokens, cost, created_at = event
    return UsageCapEvent(
        org_id=org_id,
        policy_id=policy_id,
        decision="allow",
        reason="reserved",
        model=str(model or "")[:200],
        agent_id=_uuid(agent_id),
        user_id=_uuid(user_id),
        api_key_id=_uuid(api_key_id),
        tokens=tokens,
        cost_micros=cost,
        created_at=created_at,
    )


def _reservation(lease: Lease, call: dict, tokens: int, cost: int, price: Any) -> dict[str, Any]:
    return {
        "id": None,
        "lease": lease,
        "org_id": lease.org_id,
        "price": (str(price.input), str(price.output)) if price is not None else None,
        "held": {"counter_ids": lease.counter_ids, "tokens": tokens, "cost": cost, "credit": 0},
    }


def _log_allowed() -> bool:
    return bool(getattr(settings, "USAGE_CAP_LOG_ALLOWED", True))


def lease_take(
    *, call: dict, matching: list[PolicyView], tokens: int, cost: int, price: Any
) -> dict[str, Any] | None:
    """A reservation for ``call`` from this process's lease, in memory; None when there is none
    that fits (the caller reserves through the database)."""
    now = timezone.now()
    key, _ = _key(matching, now)
    with _lock:
        lease = _leases.get(key)
        if lease is None:
            return None
        if lease.limits != _limits(matching) or now >= lease.window_end:
            _retire(lease)  # the caps changed or the window is over: no new calls on it
            return None
        if lease.free_tokens < tokens or lease.free_cost < cost:
            return None
        lease.free_tokens -= tokens
        lease.free_cost -= cost
        lease.in_flight += 1
        lease.last_used = time.monotonic()
        if _log_allowed():
            lease.events.append(_event(lease.org_id, call, matching[0].id, tokens, cost, now))
    return _reservation(lease, call, tokens, cost, price)


def _sizes(key: tuple) -> list[int]:
    """Lease sizes (in calls) to try, largest first: twice the last lease's when it ran full while
    in use (more calls at once than it had room for), up to ``USAGE_CAP_LEASE_MAX_CALLS``; then
    the base size. A size that does not fit the caps falls through to the next."""
    base = int(_setting("USAGE_CAP_LEASE_CALLS", 8))
    ceiling = max(base, int(_setting("USAGE_CAP_LEASE_MAX_CALLS", 64)))
    with _lock:
        last = _leases.get(key)
        grown = (
            min(ceiling, last.calls * 2) if last is not None and last.in_flight >= last.calls // 2 else base
        )
        grown = max(grown, _last_size.get(key, base))
    return sorted({grown, base}, reverse=True)


_last_size: dict[tuple, int] = {}
_acquiring: dict[tuple, threading.Lock] = {}


def lease_acquire(
    *, call: dict, matching: list[PolicyView], tokens: int, cost: int, price: Any, now: datetime
) -> dict[str, Any] | None:
    """Reserve a new lease with room for several calls like this one (see ``_sizes``) and take this
    call's share; None when none fits the caps: the call reserves on its own."""
    key, window_end = _key(matching, now)
    with _lock:
        key_lock = _acquiring.setdefault(key, threading.Lock())
    # One acquisition per set of caps at a time: calls that arrive together while there is no
    # lease wait for the first one's and take from it, instead of each reserving (and retiring) one.
    with key_lock:
        taken = lease_take(call=call, matching=matching, tokens=tokens, cost=cost, price=price)
        if taken is not None:
            return taken
        return _acquire(
            call=call, matching=matching, tokens=tokens, cost=cost, price=price, now=now, key=key,
            window_end=window_end,
        )  # fmt: skip


def _acquire(
    *, call: dict, matching: list[PolicyView], tokens: int, cost: int, price: Any, now: datetime, key: tuple,
    window_end: datetime,
) -> dict[str, Any] | None:  # fmt: skip
    from billing.services.usage import _uuid

    def reserve(calls: int, reservation_id: uuid.UUID) -> tuple[str, list[int]]:
        return hotpath.pg_reserve(
            reservation_id=reservation_id,
            org_id=call["org_id"],
            policies=[
                (p.id, start, p.max_tokens, p.max_cost_micros)
                for p, (_, start) in zip(matching, key, strict=True)
            ],
            tokens=tokens * calls,
            cost=cost * calls,
            call={**call, "request_id": f"lease:{calls}"},
            now=now,
            expires_at=now + timedelta(seconds=_setting("USAGE_CAP_LEASE_EXPIRY_SECONDS", 60)),
            log_allowed=False,
            async_commit=bool(getattr(settings, "USAGE_CAP_ASYNC_COMMIT", True)),
            prep_uuid=_uuid,
        )

    for calls in _sizes(key):
        reservation_id = uuid.uuid4()
        outcome, counter_ids = reserve(calls, reservation_id)
        if outcome == "missing":  # the window's first call: make its counters, then try once more
            UsageCapCounter.objects.bulk_create(
                [
                    UsageCapCounter(org_id=call["org_id"], policy_id=pid, window_start=start)
                    for pid, start in key
                ],
                ignore_conflicts=True,
            )
            outcome, counter_ids = reserve(calls, reservation_id)
        if outcome == "ok":
            break
    else:
        return None
    lease = Lease(
        org_id=str(call["org_id"]),
        key=key,
        limits=_limits(matching),
        reservation_id=reservation_id,
        counter_ids=counter_ids,
        window_end=window_end,
        calls=calls,
        held_tokens=tokens * calls,
        held_cost=cost * calls,
        free_tokens=tokens * (calls - 1),
        free_cost=cost * (calls - 1),
        in_flight=1,
    )
    if _log_allowed():
        lease.events.append(_event(lease.org_id, call, matching[0].id, tokens, cost, now))
    with _lock:
        old = _leases.get(key)
        if old is not None:
            _retire(old)
        _leases[key] = lease
        _last_size[key] = calls
        if len(_last_size) > 10_000:
            _last_size.clear()
            _acquiring.clear()
    _start_flusher()
    return _reservation(lease, call, tokens, cost, price)


def lease_settle(reservation: dict[str, Any], *, tokens: int, cost: int) -> None:
    """Book a leased call's real spend (in memory; the flusher writes it) and give back the rest."""
    lease: Lease = reservation["lease"]
    held = reservation["held"]
    with _lock:
        if reservation.get("settled"):
            return
        reservation["settled"] = True
        converted_tokens = min(tokens, held["tokens"])
        converted_cost = min(cost, held["cost"])
        lease.in_flight -= 1
        lease.pending_used_tokens += tokens
        lease.pending_used_cost += cost
        lease.pending_converted_tokens += converted_tokens
        lease.pending_converted_cost += converted_cost
        lease.held_tokens -= converted_tokens
        lease.held_cost -= converted_cost
        lease.free_tokens += held["tokens"] - converted_tokens
        lease.free_cost += held["cost"] - converted_cost
        lease.last_used = time.monotonic()
    if lease.retired and lease.in_flight == 0:
        _wake.set()


def _retire(lease: Lease) -> None:
    """(Under ``_lock``.) No new calls on this lease; it is returned once its calls have settled."""
    if lease.retired:
        return
    lease.retired = True
    if _leases.get(lease.key) is lease:
        del _leases[lease.key]
    _draining.append(lease)
    _wake.set()


# --- the flusher ----------------------------------------------------------------------------------

_FLUSH_SQL = """
WITH prev AS (
    SELECT id, status FROM {reservation} WHERE id = %(id)s FOR UPDATE
), res AS (
    UPDATE {reservation} r
    SET tokens = r.tokens - %(conv_tokens)s, cost_micros = r.cost_micros - %(conv_cost)s,
        expires_at = %(expires_at)s
    FROM prev WHERE r.id = prev.id AND prev.status = 'held'
    RETURNING 1
), locked AS (
    SELECT id FROM {counter} WHERE id = ANY(%(counter_ids)s::bigint[]) ORDER BY id FOR UPDATE
), upd AS (
    UPDATE {counter} SET
        used_tokens = used_tokens + %(used_tokens)s,
        used_cost_micros = used_cost_micros + %(used_cost)s,
        reserved_tokens = reserved_tokens
            - CASE WHEN (SELECT status FROM prev) = 'held' THEN %(conv_tokens)s ELSE 0 END,
        reserved_cost_micros = reserved_cost_micros
            - CASE WHEN (SELECT status FROM prev) = 'held' THEN %(conv_cost)s ELSE 0 END,
        updated_at = %(now)s
    WHERE id IN (SELECT id FROM locked)
    RETURNING 1
)
SELECT (SELECT status FROM prev), (SELECT count(*) FROM upd)
"""


def _flush_one(lease: Lease, now: datetime) -> None:
    with _lock:
        used_tokens, used_cost = lease.pending_used_tokens, lease.pending_used_cost
        conv_tokens, conv_cost = lease.pending_converted_tokens, lease.pending_converted_cost
        events, lease.events = lease.events, []
        lease.pending_used_tokens = lease.pending_used_cost = 0
        lease.pending_converted_tokens = lease.pending_converted_cost = 0
        finished = lease.retired and lease.in_flight == 0 and not lease.returned
        remaining = (lease.held_tokens, lease.held_cost)
        renew_every = _setting("USAGE_CAP_LEASE_EXPIRY_SECONDS", 60) / 6
        if not (used_tokens or used_cost or conv_tokens or conv_cost or events or finished):
            if lease.returned or time.monotonic() - lease.renewed < renew_every:
                return
        lease.renewed = time.monotonic()
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(
                    _FLUSH_SQL.format(
                        reservation=UsageReservation._meta.db_table, counter=UsageCapCounter._meta.db_table
                    ),
                    {
                        "id": lease.reservation_id,
                        "counter_ids": lease.counter_ids,
                        "used_tokens": used_tokens,
                        "used_cost": used_cost,
                        "conv_tokens": conv_tokens,
                        "conv_cost": conv_cost,
                        "expires_at": now + timedelta(seconds=_setting("USAGE_CAP_LEASE_EXPIRY_SECONDS", 60)),
                        "now": now,
                    },
                )
            if events:
                UsageCapEvent.objects.bulk_create([_event_row(event) for event in events])
            if finished:
                hotpath.pg_settle(
                    reservation_id=str(lease.reservation_id),
                    counter_ids=lease.counter_ids,
                    tokens=0,
                    cost=0,
                    held_tokens=remaining[0],
                    held_cost=remaining[1],
                    now=now,
                    async_commit=False,
                )
    except Exception:
        logger.exception("flushing a spend-cap lease failed; retrying")
        with _lock:  # put it back for the next pass
            lease.pending_used_tokens += used_tokens
            lease.pending_used_cost += used_cost
            lease.pending_converted_tokens += conv_tokens
            lease.pending_converted_cost += conv_cost
            lease.events = events + lease.events
        return
    if finished:
        with _lock:
            lease.returned = True
            if lease in _draining:
                _draining.remove(lease)


def leases_flush(*, return_all: bool = False) -> None:
    """One pass: write settled spend and events, renew, return idle or drained leases.

    ``return_all`` retires every lease first (process exit, tests)."""
    with _flush_lock:  # one pass at a time: two would race to return a lease and lose a flush
        now = timezone.now()
        idle = _setting("USAGE_CAP_LEASE_IDLE_SECONDS", 10.0)
        with _lock:
            for lease in list(_leases.values()):
                if return_all or time.monotonic() - lease.last_used > idle or now >= lease.window_end:
                    _retire(lease)
            work = list(_leases.values()) + list(_draining)
        for lease in work:
            _flush_one(lease, now)


def leases_forget() -> None:
    """Drop every lease from memory without writing anything (tests)."""
    with _lock:
        _leases.clear()
        _draining.clear()
        _last_size.clear()


def _flush_forever() -> None:
    interval = _setting("USAGE_CAP_LEASE_FLUSH_SECONDS", 0.2)
    while True:
        _wake.wait(interval)
        _wake.clear()
        try:
            leases_flush()
        except Exception:
            logger.exception("the spend-cap lease flusher failed")
        finally:
            close_old_connections()


def _start_flusher() -> None:
    global _flusher
    if not getattr(settings, "USAGE_CAP_LEASE_BACKGROUND", True):
        return  # tests flush by hand (leases_flush)
    with _lock:
        if _flusher is not None and _flusher.is_alive():
            return
        _flusher = threading.Thread(target=_flush_forever, name="cap-leases", daemon=True)
        _flusher.start()
    atexit.register(_return_all_at_exit)


def _return_all_at_exit() -> None:
    try:
        leases_flush(return_all=True)
    except Exception:  # the database may be gone: the rows expire and reconcile repairs
        logger.debug("returning spend-cap leases at exit failed", exc_info=True)
