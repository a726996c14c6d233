"""Spend caps: policy writes, and their enforcement at the LLM choke point by reserve then settle.

Before a call, :func:`usage_reserve` holds the worst case (estimated prompt tokens plus the call's
``max_tokens``, or ``USAGE_CAP_DEFAULT_MAX_OUTPUT_TOKENS``, priced) on the window counter of every
matching policy, in one transaction that locks those counter rows in id order: two calls can never
both see room that only one of them fits in. Every matching policy must have room; a refusal
answers 429 ``ERR_USAGE_CAP_EXCEEDED`` naming the policy and when its window resets. When the org
pays LLM calls with credits, the same transaction holds the worst case on the credit account
(402 ``ERR_INSUFFICIENT_CREDITS`` when short).

After the call, :func:`usage_settle` releases the hold and books what was really spent (nothing
for a failed call). A reservation whose worker died is released by :func:`reservations_expire`
once it passes ``expires_at``; a settle that arrives later still books the spend, once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from billing.catalogue import Price
from billing.models import (
    CapScope,
    CreditAccount,
    CreditTransaction,
    UsageCapCounter,
    UsageCapEvent,
    UsageCapPolicy,
    UsageRecord,
    UsageReservation,
)
from billing.selectors.state import (
    OrgState,
    PolicyView,
    invalidate_org_state,
    org_state,
    org_state_if_local,
    price_for,
)
from billing.services import hotpath
from billing.services.leases import lease_acquire, lease_settle, lease_take, leases_enabled
from billing.services.topup import auto_topup_schedule_if_due
from billing.services.usage import _uuid, window_bounds
from core.commits import commit_without_flush_wait
from core.errors import ApplicationError, ConflictError, ValidationError

logger = logging.getLogger(__name__)

MICROS = 1_000_000


class UsageCapExceeded(ApplicationError):
    status_code = 429
    code = "ERR_USAGE_CAP_EXCEEDED"
    message = "A spend cap of this organisation does not allow this call."


class PricingUnknown(ApplicationError):
    status_code = 422
    code = "ERR_PRICING_UNKNOWN"
    message = "This model has no known price, so a cost cap cannot be enforced; add a price override."


class InsufficientCredits(ApplicationError):
    status_code = 402
    code = "ERR_INSUFFICIENT_CREDITS"
    message = "The credit balance is too low for this."


class ManagedPolicy(ConflictError):
    code = "ERR_POLICY_MANAGED"
    message = "This policy is managed by the plan and cannot be changed or deleted."


# --- policy writes -----------------------------------------------------------------------------

POLICY_FIELDS = (
    "name",
    "window",
    "max_tokens",
    "max_cost_micros",
    "scope",
    "scope_value",
    "priority",
    "enabled",
)


def _snapshot(policy: UsageCapPolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in (*POLICY_FIELDS, "managed")}


def _validate(policy: UsageCapPolicy) -> None:
    if policy.max_tokens is None and policy.max_cost_micros is None:
        raise ValidationError(
            "A policy needs max_tokens, max_cost_usd or both.",
            details={"max_tokens": ["Give max_tokens and/or max_cost_usd."]},
        )
    if policy.scope == CapScope.ORG:
        policy.scope_value = ""
    elif not policy.scope_value:
        raise ValidationError(
            f"A policy scoped to {policy.scope} needs scope_value (the {policy.scope}'s id or name).",
            details={"scope_value": ["This field is required for this scope."]},
        )
    elif (
        policy.scope in (CapScope.AGENT, CapScope.USER, CapScope.API_KEY)
        and _uuid(policy.scope_value) is None
    ):
        raise ValidationError(
            f"scope_value must be the {policy.scope}'s id.", details={"scope_value": ["Not a valid id."]}
        )
    try:
        policy.full_clean()
    except Exception as exc:  # django ValidationError -> our envelope
        details = getattr(exc, "message_dict", {"__all__": [str(exc)]})
        raise ValidationError("The policy is not valid.", details=details) from exc


@transaction.atomic
def usage_cap_policy_create(*, org: Organization, actor: User | None, **fields: Any) -> UsageCapPolicy:
    """Add a spend cap; it applies from the next call (the guard's cached state is dropped)."""
    policy = UsageCapPolicy(org=org, **{k: v for k, v in fields.items() if k in POLICY_FIELDS})
    _validate(policy)
    policy.save()
    audit_record(org=org, actor=actor, action="usage_cap.created", entity=policy, after=_snapshot(policy))
    transaction.on_commit(lambda: invalidate_org_state(org.pk))
    invalidate_org_state(org.pk)
    return policy


@transaction.atomic
def usage_cap_policy_update(*, policy: UsageCapPolicy, actor: User | None, **fields: Any) -> UsageCapPolicy:
    """Change a policy; managed policies (set by the plan) answer 409."""
    policy = UsageCapPolicy.objects.select_for_update().get(pk=policy.pk)
    if policy.managed:
        raise ManagedPolicy(details={"policy_id": str(policy.pk)})
    before = _snapshot(policy)
    for name, value in fields.items():
        if name in POLICY_FIELDS:
            setattr(policy, name, value)
    _validate(policy)
    policy.save()
    audit_record(
        org=policy.org,
        actor=actor,
        action="usage_cap.updated",
        entity=policy,
        before=before,
        after=_snapshot(policy),
    )
    org_id = policy.org_id
    transaction.on_commit(lambda: invalidate_org_state(org_id))
    invalidate_org_state(org_id)
    return policy


@transaction.atomic
def usage_cap_policy_delete(*, policy: UsageCapPolicy, actor: User | None) -> None:
    """Remove a policy (its counters go with it); managed policies answer 409."""
    if policy.managed:
        raise ManagedPolicy(details={"policy_id": str(policy.pk)})
    audit_record(
        org=policy.org, actor=actor, action="usage_cap.deleted", entity=policy, before=_snapshot(policy)
    )
    org_id = policy.org_id
    policy.delete()
    transaction.on_commit(lambda: invalidate_org_state(org_id))
    invalidate_org_state(org_id)


@transaction.atomic
def managed_policy_sync(
    *, org: Organization, key: str, window: str, max_tokens: int | None, name: str
) -> None:
    """Create, change or remove the policy a plan manages (``max_tokens`` None removes it)."""
    existing = UsageCapPolicy.objects.filter(org=org, managed_key=key).first()
    if max_tokens is None:
        if existing is not None:
            existing.delete()
    elif existing is None:
        UsageCapPolicy.objects.create(
            org=org,
            name=name,
            window=window,
            max_tokens=max_tokens,
            managed=True,
            managed_key=key,
            priority=1000,
        )
    else:
        existing.max_tokens, existing.window, existing.name, existing.enabled = max_tokens, window, name, True
        existing.save()
    transaction.on_commit(lambda: invalidate_org_state(org.pk))
    invalidate_org_state(org.pk)


# --- enforcement -------------------------------------------------------------------------------


def policy_matches(policy: PolicyView | UsageCapPolicy, call: dict[str, Any]) -> bool:
    """Whether a call falls under a policy's scope."""
    value = policy.scope_value
    if policy.scope == CapScope.ORG:
        return True
    if policy.scope == CapScope.AGENT:
        return str(call.get("agent_id") or "") == value
    if policy.scope == CapScope.PROVIDER:  # a provider id, or a provider type such as "openai"
        return value in (str(call.get("provider_id") or ""), str(call.get("provider_type") or ""))
    if policy.scope == CapScope.MODEL:
        return str(call.get("model") or "") == value
    if policy.scope == CapScope.USER:
        return str(call.get("user_id") or "") == value
    if policy.scope == CapScope.API_KEY:
        return str(call.get("api_key_id") or "") == value
    return False


def _worst_case_tokens(call: dict[str, Any]) -> tuple[int, int]:
    prompt = max(0, int(call.get("estimated_prompt_tokens") or 0))
    if call.get("purpose") == "embedding":
        return prompt, 0
    output = call.get("max_tokens")
    if output is None:
        output = int(getattr(settings, "USAGE_CAP_DEFAULT_MAX_OUTPUT_TOKENS", 4096))
    return prompt, max(0, int(output))


def _event(
    org_id: str, call: dict, decision: str, *, policy_id=None, reason="", tokens=0, cost=0
) -> UsageCapEvent:
    return UsageCapEvent(
        org_id=org_id,
        policy_id=policy_id,
        decision=decision,
        reason=reason,
        model=str(call.get("model") or "")[:200],
        agent_id=_uuid(call.get("agent_id")),
        user_id=_uuid(call.get("user_id")),
        api_key_id=_uuid(call.get("api_key_id")),
        tokens=tokens,
        cost_micros=cost,
    )


class _Refused(Exception):
    def __init__(self, error: ApplicationError, policy_id: str | None, reason: str) -> None:
        super().__init__(error.message)
        self.error, self.policy_id, self.reason = error, policy_id, reason


def _cap_error(
    policy: PolicyView, counter: UsageCapCounter, reset: datetime, *, tokens: int, cost: int
) -> UsageCapExceeded:
    retry = max(1, int((reset - timezone.now()).total_seconds()) + 1)
    return UsageCapExceeded(
        f"The spend cap {policy.name or policy.id!s} ({policy.window}) does not allow this call; "
        f"it resets at {reset.isoformat()}.",
        details={
            "policy_id": policy.id,
            "policy_name": policy.name,
            "window": policy.window,
            "resets_at": reset.isoformat(),
            "max_tokens": policy.max_tokens,
            "max_cost_usd": None if policy.max_cost_micros is None else policy.max_cost_micros / MICROS,
            "used_tokens": counter["used_tokens"] + counter["reserved_tokens"],
            "used_cost_usd": (counter["used_cost_micros"] + counter["reserved_cost_micros"]) / MICROS,
            "requested_tokens": tokens,
            "requested_cost_usd": cost / MICROS,
        },
        headers={"Retry-After": str(retry)},
    )


def usage_guard_applies(call: dict[str, Any]) -> bool | None:
    """The guard's ``applies``: False when the org's state, held in memory, has nothing to enforce
    on this call (the common org without caps or credits); None when the state is not in memory."""
    state = org_state_if_local(call["org_id"])
    if state is None:
        return None
    if not state.enforces:
        return False
    return state.credit_billing or any(policy_matches(p, call) for p in state.policies)


def usage_reserve_in_memory(call: dict[str, Any]) -> dict[str, Any] | None:
    """The guard's ``try_before`` (on the event loop, no I/O): a reservation from this process's
    spend-cap lease when the org's state is in memory and a lease has room; None otherwise."""
    if not leases_enabled():
        return None
    state = org_state_if_local(call["org_id"])
    if state is None or not state.policies or state.credit_billing:
        return None
    matching = [p for p in state.policies if policy_matches(p, call)]
    if not matching:
        return None
    price = price_for(
        org_id=call["org_id"],
        model=str(call.get("model") or ""),
        provider_type=str(call.get("provider_type") or ""),
        state=state,
    )
    if price is None and any(p.max_cost_micros is not None for p in matching):
        return None  # the database path refuses it and logs the block
    prompt, output = _worst_case_tokens(call)
    cost = price.cost_micros(prompt, output) if price is not None else 0
    return lease_take(call=call, matching=matching, tokens=prompt + output, cost=cost, price=price)


def usage_reserve(call: dict[str, Any], *, state: OrgState | None = None) -> dict[str, Any] | None:
    """The guard's ``before``: hold the call's worst case on every matching cap (and on credits)."""
    org_id = call["org_id"]
    state = state or org_state(org_id)
    if not state.enforces:
        return None
    matching = [p for p in state.policies if policy_matches(p, call)]
    if not matching and not state.credit_billing:
        return None
    prompt, output = _worst_case_tokens(call)
    tokens = prompt + output
    price = price_for(
        org_id=org_id,
        model=str(call.get("model") or ""),
        provider_type=str(call.get("provider_type") or ""),
        state=state,
    )
    cost_policies = [p for p in matching if p.max_cost_micros is not None]
    if price is None and (cost_policies or state.credit_billing):
        policy = cost_policies[0] if cost_policies else None
        UsageCapEvent.objects.bulk_create(
            [
                _event(
                    org_id,
                    call,
                    "block",
                    policy_id=policy.id if policy else None,
                    reason="pricing_unknown",
                    tokens=tokens,
                )
            ]
        )
        raise PricingUnknown(
            f"The model {call.get('model')!r} has no known price, so its cost cannot be capped or paid "
            "with credits; add a price override for it.",
            details={"model": call.get("model"), "policy_id": policy.id if policy else None},
        )
    cost = price.cost_micros(prompt, output) if price is not None else 0
    credit = cost * int(getattr(settings, "CREDITS_PER_USD", 100)) if state.credit_billing else 0
    now = timezone.now()
    if matching and not credit and connection.vendor == "postgresql":
        if leases_enabled():
            leased = lease_take(
                call=call, matching=matching, tokens=tokens, cost=cost, price=price
            ) or lease_acquire(call=call, matching=matching, tokens=tokens, cost=cost, price=price, now=now)
            if leased is not None:
                return leased
        fast = _pg_reserve(org_id, call, matching, tokens, cost, now, price)
        if fast is not None:
            return fast
    try:
        with transaction.atomic():
            reservation = _reserve_locked(org_id, call, matching, tokens, cost, credit, now)
    except _Refused as refused:
        UsageCapEvent.objects.bulk_create(
            [
                _event(
                    org_id,
                    call,
                    "block",
                    policy_id=refused.policy_id,
                    reason=refused.reason,
                    tokens=tokens,
                    cost=cost,
                )
            ]
        )
        raise refused.error from None
    return {
        "id": str(reservation.pk),
        "org_id": org_id,
        "price": (str(price.input), str(price.output)) if price is not None else None,
        "held": {
            "counter_ids": reservation.counter_ids,
            "tokens": reservation.tokens,
            "cost": reservation.cost_micros,
            "credit": reservation.credit_micros,
        },
    }


def _pg_reserve(
    org_id: str, call: dict, matching: list[PolicyView], tokens: int, cost: int, now: datetime, price: Any
) -> dict[str, Any] | None:
    """The one-statement reserve (``hotpath.pg_reserve``); None sends the call the general way."""
    reservation_id = uuid.uuid4()
    outcome, counter_ids = hotpath.pg_reserve(
        reservation_id=reservation_id,
        org_id=org_id,
        policies=[(p.id, window_bounds(p.window, now)[0], p.max_tokens, p.max_cost_micros) for p in matching],
        tokens=tokens,
        cost=cost,
        call=call,
        now=now,
        expires_at=now + timedelta(seconds=int(getattr(settings, "USAGE_CAP_RESERVATION_SECONDS", 900))),
        log_allowed=bool(getattr(settings, "USAGE_CAP_LOG_ALLOWED", True)),
        async_commit=bool(getattr(settings, "USAGE_CAP_ASYNC_COMMIT", True)),
        prep_uuid=_uuid,
    )
    if outcome != "ok":
        return None
    return {
        "id": str(reservation_id),
        "org_id": org_id,
        "price": (str(price.input), str(price.output)) if price is not None else None,
        "held": {"counter_ids": counter_ids, "tokens": tokens, "cost": cost, "credit": 0},
    }


def _fast_commit() -> None:
    """Counter transactions commit without waiting for the WAL flush on PostgreSQL
    (``USAGE_CAP_ASYNC_COMMIT``): a crash can lose the last few hundred milliseconds of counter
    changes, which reconcile-budgets rebuilds from the usage records (written durably), and held
    reservations expire. It halves what enforcement adds to a call on a busy disk."""
    if getattr(settings, "USAGE_CAP_ASYNC_COMMIT", True):
        commit_without_flush_wait()


def _reserve_locked(
    org_id: str, call: dict, matching: list[PolicyView], tokens: int, cost: int, credit: int, now: datetime
) -> UsageReservation:
    _fast_commit()
    windows = {p.id: window_bounds(p.window, now) for p in matching}
    counter_ids: list[int] = []
    if matching:
        # Lock (and create, once per window) the counters in id order, so that two calls under the
        # same policies never wait on each other in opposite orders.
        pairs = [(p.id, windows[p.id][0]) for p in matching]
        counters = {c["policy_id"]: c for c in hotpath.lock_counters(pairs)}
        if len(counters) < len(matching):
            UsageCapCounter.objects.bulk_create(
                [
                    UsageCapCounter(org_id=org_id, policy_id=p.id, window_start=windows[p.id][0])
                    for p in matching
                    if p.id not in counters
                ],
                ignore_conflicts=True,
            )
            counters = {c["policy_id"]: c for c in hotpath.lock_counters(pairs)}
        for p in matching:  # highest priority first: the refusal names the most important cap
            counter = counters[p.id]
            over_tokens = (
                p.max_tokens is not None
                and counter["used_tokens"] + counter["reserved_tokens"] + tokens > p.max_tokens
            )
            over_cost = (
                p.max_cost_micros is not None
                and counter["used_cost_micros"] + counter["reserved_cost_micros"] + cost > p.max_cost_micros
            )
            if over_tokens or over_cost:
                error = _cap_error(p, counter, windows[p.id][1], tokens=tokens, cost=cost)
                raise _Refused(error, p.id, "max_tokens" if over_tokens else "max_cost")
        counter_ids = sorted(c["id"] for c in counters.values())
        hotpath.add_to_counters(
            counter_ids, used_tokens=0, used_cost=0, reserved_tokens=tokens, reserved_cost=cost, now=now
        )
    if credit:
        held = CreditAccount.objects.filter(
            org_id=org_id, balance_micros__gte=F("held_micros") + credit
        ).update(held_micros=F("held_micros") + credit)
        if not held:
            balance = (
                CreditAccount.objects.filter(org_id=org_id)
                .values_list("balance_micros", "held_micros")
                .first()
            )
            available = (balance[0] - balance[1]) if balance else 0
            raise _Refused(
                InsufficientCredits(
                    "The credit balance is too low for this call.",
                    details={"available": available / MICROS, "required": credit / MICROS},
                ),
                None,
                "credits",
            )
    reservation = UsageReservation(
        id=uuid.uuid4(),
        org_id=org_id,
        created_at=now,
        counter_ids=counter_ids,
        tokens=tokens,
        cost_micros=cost,
        credit_micros=credit,
        model=str(call.get("model") or "")[:200],
        provider_type=str(call.get("provider_type") or "")[:32],
        request_id=str(call.get("request_id") or "")[:128],
        expires_at=now + timedelta(seconds=int(getattr(settings, "USAGE_CAP_RESERVATION_SECONDS", 900))),
    )
    UsageReservation.objects.bulk_create([reservation])
    if matching and getattr(settings, "USAGE_CAP_LOG_ALLOWED", True):
        UsageCapEvent.objects.bulk_create(
            [
                _event(
                    org_id,
                    call,
                    "allow",
                    policy_id=matching[0].id,
                    reason="reserved",
                    tokens=tokens,
                    cost=cost,
                )
            ]
        )
    return reservation


def usage_settle(
    call: dict[str, Any], usage: dict[str, Any] | None, reservation: dict[str, Any] | None
) -> None:
    """The guard's ``after``: release the hold and book the real spend (zero for a failed call)."""
    if not reservation:
        return
    prompt = int((usage or {}).get("prompt_tokens") or 0)
    completion = int((usage or {}).get("completion_tokens") or 0)
    tokens = prompt + completion
    if reservation.get("price") is not None:
        raw_in, raw_out = reservation["price"]
        cost = Price(input=Decimal(raw_in), output=Decimal(raw_out)).cost_micros(prompt, completion)
    else:
        cost = 0
    if reservation.get("lease") is not None:
        lease_settle(reservation, tokens=tokens, cost=cost)
        return
    held = reservation.get("held")
    if held and not held.get("credit") and connection.vendor == "postgresql":
        hotpath.pg_settle(
            reservation_id=reservation["id"],
            counter_ids=held.get("counter_ids") or [],
            tokens=tokens,
            cost=cost,
            held_tokens=held["tokens"],
            held_cost=held["cost"],
            now=timezone.now(),
            async_commit=bool(getattr(settings, "USAGE_CAP_ASYNC_COMMIT", True)),
        )
        return
    reservation_settle(reservation_id=reservation["id"], tokens=tokens, cost_micros=cost, held=held)


@transaction.atomic
def reservation_settle(
    *, reservation_id: str, tokens: int, cost_micros: int, held: dict[str, Any] | None = None
) -> bool:
    """Book ``tokens``/``cost_micros`` on the reservation's counters and credits, once.

    Returns False when the reservation was already settled. A reservation that expired meanwhile
    (its hold already released) still books the spend. ``held`` (what the reserve returned) spares
    reading the reservation row back.
    """
    _fast_commit()
    now = timezone.now()
    release = True
    won = UsageReservation.objects.filter(pk=reservation_id, status=UsageReservation.Status.HELD).update(
        status=UsageReservation.Status.SETTLED, settled_at=now
    )
    if not won:
        release = False
        won = UsageReservation.objects.filter(
            pk=reservation_id, status=UsageReservation.Status.EXPIRED
        ).update(status=UsageReservation.Status.SETTLED, settled_at=now)
        if not won:
            return False
    if held is None:
        row = UsageReservation.objects.get(pk=reservation_id)
        held = {
            "counter_ids": row.counter_ids,
            "tokens": row.tokens,
            "cost": row.cost_micros,
            "credit": row.credit_micros,
        }
    held_tokens = held["tokens"] if release else 0
    held_cost = held["cost"] if release else 0
    ids = sorted(held["counter_ids"] or [])
    if ids:
        if len(ids) > 1:  # lock in id order (see _reserve_locked)
            list(
                UsageCapCounter.objects.select_for_update()
                .filter(pk__in=ids)
                .order_by("id")
                .values_list("id")
            )
        hotpath.add_to_counters(
            ids,
            used_tokens=tokens,
            used_cost=cost_micros,
            reserved_tokens=-held_tokens,
            reserved_cost=-held_cost,
            now=now,
        )
    if held["credit"]:
        _settle_credits(reservation_id, held["credit"], cost_micros, release=release)
    return True


def _settle_credits(reservation_id: str, credit_held: int, cost_micros: int, *, release: bool) -> None:
    reservation = UsageReservation.objects.only("org_id", "model").get(pk=reservation_id)
    account = CreditAccount.objects.select_for_update().get(org_id=reservation.org_id)
    held = credit_held if release else 0
    charge = min(cost_micros * int(getattr(settings, "CREDITS_PER_USD", 100)), account.balance_micros)
    account.held_micros = max(0, account.held_micros - held)
    account.balance_micros -= charge
    account.save(update_fields=["held_micros", "balance_micros", "updated_at"])
    auto_topup_schedule_if_due(account)
    if charge:
        CreditTransaction.objects.create(
            org_id=reservation.org_id,
            kind=CreditTransaction.Kind.CONSUME,
            amount_micros=-charge,
            balance_after_micros=account.balance_micros,
            action=f"llm:{reservation.model}"[:100],
            reference_id=f"llm:{reservation_id}",
        )


def reservations_expire(*, now: datetime | None = None) -> int:
    """Release the holds of reservations past ``expires_at`` (their worker died); returns how many."""
    now = now or timezone.now()
    released = 0
    for reservation_id in UsageReservation.objects.filter(
        status=UsageReservation.Status.HELD, expires_at__lt=now
    ).values_list("id", flat=True)[:1000]:
        with transaction.atomic():
            if not UsageReservation.objects.filter(
                pk=reservation_id, status=UsageReservation.Status.HELD
            ).update(status=UsageReservation.Status.EXPIRED):
                continue  # settled meanwhile
            reservation = UsageReservation.objects.get(pk=reservation_id)
            if reservation.counter_ids:
                ids = sorted(reservation.counter_ids)
                list(
                    UsageCapCounter.objects.select_for_update()
                    .filter(pk__in=ids)
                    .order_by("id")
                    .values_list("id")
                )
                UsageCapCounter.objects.filter(pk__in=ids).update(
                    reserved_tokens=F("reserved_tokens") - reservation.tokens,
                    reserved_cost_micros=F("reserved_cost_micros") - reservation.cost_micros,
                )
            if reservation.credit_micros:
                account = CreditAccount.objects.select_for_update().get(org_id=reservation.org_id)
                account.held_micros = max(0, account.held_micros - reservation.credit_micros)
                account.save(update_fields=["held_micros", "updated_at"])
            released += 1
    return released


def _records_for(policy: UsageCapPolicy, start: datetime, end: datetime):
    records = UsageRecord.objects.filter(org_id=policy.org_id, created_at__gte=start, created_at__lt=end)
    value = policy.scope_value
    if policy.scope == CapScope.AGENT:
        records = records.filter(agent_id=_uuid(value))
    elif policy.scope == CapScope.USER:
        records = records.filter(user_id=_uuid(value))
    elif policy.scope == CapScope.API_KEY:
        records = records.filter(api_key_id=_uuid(value))
    elif policy.scope == CapScope.MODEL:
        records = records.filter(model=value)
    elif policy.scope == CapScope.PROVIDER:
        provider_id = _uuid(value)
        records = records.filter(Q(provider_id=provider_id) if provider_id else Q(provider_type=value))
    return records


def budgets_reconcile(*, now: datetime | None = None, settle_grace_seconds: int = 60) -> dict[str, Any]:
    """Recompute the current window of every enabled policy from the usage records and repair any
    drift of ``used_*`` (and of ``reserved_*`` against the reservations still held); expired
    reservations are released first. Returns what was repaired, for the cron's report."""
    now = now or timezone.now()
    expired = reservations_expire(now=now)
    held = list(
        UsageReservation.objects.filter(status=UsageReservation.Status.HELD).values_list(
            "counter_ids", "tokens", "cost_micros"
        )
    )
    repaired: list[dict[str, Any]] = []
    checked = 0
    for policy in UsageCapPolicy.objects.filter(enabled=True).iterator():
        start, end = window_bounds(policy.window, now)
        # Calls settle a moment before their record is written: leave the last minute alone.
        cutoff = now - timedelta(seconds=settle_grace_seconds)
        with transaction.atomic():
            counter = (
                UsageCapCounter.objects.select_for_update().filter(policy=policy, window_start=start).first()
            )
            if counter is None:
                continue
            checked += 1
            if counter.updated_at and counter.updated_at > cutoff:
                continue  # busy right now; the next run will look again
            sums = _records_for(policy, start, end).aggregate(
                p=Sum("prompt_tokens"), c=Sum("completion_tokens"), cost=Sum("cost_micros")
            )
            tokens = (sums["p"] or 0) + (sums["c"] or 0)
            cost = sums["cost"] or 0
            reserved_tokens = sum(t for ids, t, _ in held if counter.pk in (ids or []))
            reserved_cost = sum(c for ids, _, c in held if counter.pk in (ids or []))
            drift = {
                "used_tokens": tokens - counter.used_tokens,
                "used_cost_micros": cost - counter.used_cost_micros,
                "reserved_tokens": reserved_tokens - counter.reserved_tokens,
                "reserved_cost_micros": reserved_cost - counter.reserved_cost_micros,
            }
            if any(drift.values()):
                UsageCapCounter.objects.filter(pk=counter.pk).update(
                    used_tokens=tokens,
                    used_cost_micros=cost,
                    reserved_tokens=reserved_tokens,
                    reserved_cost_micros=reserved_cost,
                )
                repaired.append({"policy_id": str(policy.pk), "org_id": str(policy.org_id), "drift": drift})
    if repaired:
        logger.warning("reconcile-budgets repaired %d counters: %s", len(repaired), repaired)
    # Counters of windows long over and settled reservations are history nobody reads.
    pruned_counters, _ = UsageCapCounter.objects.filter(window_start__lt=now - timedelta(days=62)).delete()
    pruned_reservations, _ = UsageReservation.objects.filter(
        status__in=[UsageReservation.Status.SETTLED, UsageReservation.Status.EXPIRED],
        created_at__lt=now - timedelta(days=1),
    ).delete()
    return {
        "expired_reservations": expired,
        "counters_checked": checked,
        "counters_repaired": repaired,
        "pruned": {"counters": pruned_counters, "reservations": pruned_reservations},
    }
