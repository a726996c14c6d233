"""Reads of spend caps: policies, their utilisation in the current window, allow/block events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from billing.models import UsageCapCounter, UsageCapEvent, UsageCapPolicy
from billing.services.usage import window_bounds

MICROS = 1_000_000


def usage_cap_policy_list(*, org) -> QuerySet[UsageCapPolicy]:
    return UsageCapPolicy.objects.filter(org=org)


def usage_cap_event_list(*, org, decision: str = "", policy: Any = None) -> QuerySet[UsageCapEvent]:
    events = UsageCapEvent.objects.filter(org=org).select_related("policy")
    if decision:
        events = events.filter(decision=decision)
    if policy:
        events = events.filter(policy_id=policy)
    return events


def usage_cap_utilization(*, org, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every enabled policy with what its current window has used and holds, and when it resets."""
    now = now or timezone.now()
    policies = list(UsageCapPolicy.objects.filter(org=org, enabled=True))
    windows = {p.pk: window_bounds(p.window, now) for p in policies}
    counters = {
        (c.policy_id, c.window_start): c
        for c in UsageCapCounter.objects.filter(
            policy__in=policies, window_start__in={w[0] for w in windows.values()}
        )
    }
    items = []
    for policy in policies:
        start, end = windows[policy.pk]
        counter = counters.get((policy.pk, start))
        used_tokens = counter.used_tokens if counter else 0
        used_cost = counter.used_cost_micros if counter else 0
        reserved_tokens = counter.reserved_tokens if counter else 0
        reserved_cost = counter.reserved_cost_micros if counter else 0
        ratios = []
        if policy.max_tokens:
            ratios.append((used_tokens + reserved_tokens) / policy.max_tokens)
        if policy.max_cost_micros:
            ratios.append((used_cost + reserved_cost) / policy.max_cost_micros)
        items.append(
            {
                "policy": policy,
                "window_start": start,
                "resets_at": end,
                "used_tokens": used_tokens,
                "reserved_tokens": reserved_tokens,
                "used_cost_usd": used_cost / MICROS,
                "reserved_cost_usd": reserved_cost / MICROS,
                "max_tokens": policy.max_tokens,
                "max_cost_usd": None if policy.max_cost_micros is None else policy.max_cost_micros / MICROS,
                "utilization": round(max(ratios), 4) if ratios else 0.0,
            }
        )
    items.sort(key=lambda item: -item["utilization"])
    return items
