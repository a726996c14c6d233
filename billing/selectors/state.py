"""What the LLM guard needs to know about an org on every call, cached briefly per org.

The guard runs before every LLM call, so it must answer "nothing to enforce" without a query for
the common org that has no spend cap and no credit plan. The state (enabled policies, whether LLM
calls are paid from credits, the org's price overrides) is cached for ``USAGE_CAP_CACHE_SECONDS``
and dropped by every service that changes one of its inputs (:func:`invalidate_org_state`).

In front of the shared cache each process keeps the state for ``USAGE_CAP_LOCAL_SECONDS`` (1 s):
a call then reads a dict instead of making a cache round trip, twice per LLM call (the guard and
the usage record). A change made in this process is seen at once; one made in another process
within that second.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache

from billing.catalogue import Price, catalogue_price, plan_get
from core import aredis
from core.db_threads import on_server_loop, run_db, start_once

_KEY = "billing:org-state:v1:{}"
_local: dict[str, tuple[float, Any]] = {}
_local_lock = threading.Lock()


@dataclass(frozen=True)
class PolicyView:
    """The fields of an enabled cap policy that enforcement reads."""

    id: str
    name: str
    window: str
    max_tokens: int | None
    max_cost_micros: int | None
    scope: str
    scope_value: str
    priority: int


@dataclass(frozen=True)
class OrgState:
    policies: tuple[PolicyView, ...] = ()
    credit_billing: bool = False
    plan: str = ""
    overrides: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    @property
    def enforces(self) -> bool:
        return bool(self.policies) or self.credit_billing


def _load(org_id: str) -> OrgState:
    from billing.catalogue import default_plan_key
    from billing.models import PriceOverride, Subscription, UsageCapPolicy

    policies = tuple(
        PolicyView(
            id=str(p.id),
            name=p.name,
            window=p.window,
            max_tokens=p.max_tokens,
            max_cost_micros=p.max_cost_micros,
            scope=p.scope,
            scope_value=p.scope_value,
            priority=p.priority,
        )
        for p in UsageCapPolicy.objects.filter(org_id=org_id, enabled=True).order_by("-priority", "id")
    )
    plan_key = Subscription.objects.filter(org_id=org_id).values_list("plan", flat=True).first()
    plan = plan_get(plan_key or "") or plan_get(default_plan_key()) or {}
    overrides = {
        (o.model, o.provider_type): (str(o.input_per_million), str(o.output_per_million))
        for o in PriceOverride.objects.filter(org_id=org_id)
    }
    return OrgState(
        policies=policies,
        credit_billing=bool(plan.get("credit_billing")),
        plan=plan.get("key", ""),
        overrides=overrides,
    )


def org_state(org_id: Any) -> OrgState:
    """The org's enforcement state, from the cache when fresh."""
    key = _KEY.format(org_id)
    now = time.monotonic()
    held = _local.get(key)
    if held is not None and held[0] > now:
        return held[1]
    state = cache.get(key)
    if state is None:
        state = _load(str(org_id))
        cache.set(key, state, int(getattr(settings, "USAGE_CAP_CACHE_SECONDS", 30)))
    _keep(key, state, now)
    return state


def _keep(key: str, state: OrgState, now: float) -> None:
    local_seconds = float(getattr(settings, "USAGE_CAP_LOCAL_SECONDS", 1.0))
    if local_seconds > 0:
        with _local_lock:
            if len(_local) > 10_000:
                _local.clear()
            _local[key] = (now + local_seconds, state)


def org_state_if_local(org_id: Any) -> OrgState | None:
    """The state this process holds for the org right now, without any I/O; None when it has none.

    On a server's event loop a state a little past its second (up to ``USAGE_CAP_LOCAL_STALE_SECONDS``)
    is still answered while the loop fetches the fresh one (:func:`_arefresh`), so that the calls
    of that moment do not all leave the loop to fetch it; anywhere else (tests, tasks) only a fresh
    one counts.
    """
    key = _KEY.format(org_id)
    held = _local.get(key)
    if held is None:
        return None
    now = time.monotonic()
    if held[0] > now:
        return held[1]
    if (
        now - held[0] > float(getattr(settings, "USAGE_CAP_LOCAL_STALE_SECONDS", 10.0))
        or not on_server_loop()
    ):
        return None
    start_once(("billing-org-state", key), lambda: _arefresh(org_id, key))
    return held[1]


async def _arefresh(org_id: Any, key: str) -> None:
    """Fetch the org's state into this process from the event loop: the shared cache is read on
    the loop (``core.aredis``), and only when it does not hold the state is it loaded on a pool
    thread. A thread woken for every refresh would contend for the GIL with the loop, which at
    that moment is sending the call that found the state stale (``bench/stream_fanout.py``)."""
    read = await aredis.cache_get_many_and_count([key])
    state = read[0].get(key) if read is not None else None
    if state is None:
        await run_db(org_state, org_id)
    else:
        _keep(key, state, time.monotonic())


def invalidate_org_state(org_id: Any) -> None:
    """Forget the cached state (call after changing policies, overrides or the subscription)."""
    key = _KEY.format(org_id)
    with _local_lock:
        _local.pop(key, None)
    cache.delete(key)


def price_for(
    *, org_id: Any, model: str, provider_type: str = "", state: OrgState | None = None
) -> Price | None:
    """The price the org pays for ``model``: its override for this provider type, its override for
    any provider, then the shipped catalogue; None when nothing is known."""
    overrides = (state or org_state(org_id)).overrides
    for key in ((model, provider_type), (model, "")):
        if key in overrides:
            raw_in, raw_out = overrides[key]
            return Price(input=Decimal(raw_in), output=Decimal(raw_out), source="override", model=model)
    return catalogue_price(model)


def cost_estimate_micros(
    *, org_id: Any, model: str, provider_type: str = "", prompt_tokens: int, completion_tokens: int
) -> int | None:
    """What these tokens cost the org, for displays such as a chat turn's ``usage`` event (the
    usage record stays the billed figure); None when the model has no known price."""
    price = price_for(org_id=org_id, model=model, provider_type=provider_type)
    return None if price is None else price.cost_micros(prompt_tokens, completion_tokens)
