"""Reads of usage: summary, time series and breakdowns over a period, served from the rollups.

A period ``[from, to)`` is cut into the part covered by day rollups (whole days already rolled up),
the parts covered by hour rollups (whole hours), and the ragged edges and the not yet rolled tail,
which are read from the raw records. A month of two million records thus reads about thirty day
rows per dimension combination plus at most a few hours of raw records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay, TruncHour

from billing.models import UsageRecord, UsageRollup, UsageRollupState
from billing.services.usage import floor_day, floor_hour

GROUPS = {
    "provider": ("provider_id", "provider_type"),
    "model": ("model",),
    "agent": ("agent_id",),
    "user": ("user_id",),
    "channel": ("channel",),
    "key": ("api_key_id",),
}
MICROS = 1_000_000


def _ceil(moment: datetime, floor) -> datetime:
    floored = floor(moment)
    if floored == moment:
        return moment
    return floored + (timedelta(days=1) if floor is floor_day else timedelta(hours=1))


def segments(
    start: datetime, end: datetime, *, use_days: bool = True
) -> list[tuple[str, datetime, datetime]]:
    """``[(source, from, to)]`` with source ``day``, ``hour`` or ``raw``, covering ``[start, end)``."""
    state = UsageRollupState.objects.filter(id=1).first()
    hours_through = state.hours_through if state else None
    days_through = state.days_through if state else None
    out: list[tuple[str, datetime, datetime]] = []

    def by_hours(a: datetime, b: datetime) -> None:
        if a >= b:
            return
        h1 = _ceil(a, floor_hour)
        h2 = min(floor_hour(b), hours_through) if hours_through else h1
        if h1 < h2:
            if a < h1:
                out.append(("raw", a, h1))
            out.append(("hour", h1, h2))
            if h2 < b:
                out.append(("raw", h2, b))
        else:
            out.append(("raw", a, b))

    if use_days and days_through:
        d1 = _ceil(start, floor_day)
        d2 = min(floor_day(end), days_through)
        if d1 < d2:
            by_hours(start, d1)
            out.append(("day", d1, d2))
            by_hours(d2, end)
            return out
    by_hours(start, end)
    return out


FILTER_FIELDS = {
    "agent": "agent_id",
    "model": "model",
    "user": "user_id",
    "channel": "channel",
    "key": "api_key_id",
}


def _is_uuid(value: str) -> bool:
    import uuid

    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _record_filter(filters: dict[str, Any]) -> Q:
    q = Q()
    for name, value in filters.items():
        if name == "provider":
            q &= Q(provider_id=value) if _is_uuid(str(value)) else Q(provider_type=str(value))
        else:
            q &= Q(**{FILTER_FIELDS[name]: value})
    return q


def _rollup_plan(filters: dict[str, Any], group_by: str | None) -> tuple[str, Q] | None:
    """The rollup dimension that answers this report and the filter on its rows, or None when
    only the raw records can (two dimensions at once)."""
    dims = set(filters)
    if group_by is None:
        if not dims:
            return "", Q()
        if len(dims) > 1:
            return None
        dimension = next(iter(dims))
    else:
        if dims - {group_by}:
            return None
        dimension = group_by
    q = Q()
    if dimension in filters:
        value = str(filters[dimension])
        q = Q(label=value) if dimension == "provider" and not _is_uuid(value) else Q(value=value)
    return dimension, q


def _sources(org, start, end, filters, *, group_by=None, use_days=True) -> Iterable[tuple[str, Any]]:
    plan = _rollup_plan(filters, group_by)
    raw_q = _record_filter(filters)
    pieces = segments(start, end, use_days=use_days) if plan is not None else [("raw", start, end)]
    for source, a, b in pieces:
        if source == "raw":
            yield "raw", UsageRecord.objects.filter(raw_q, org=org, created_at__gte=a, created_at__lt=b)
        else:
            dimension, q = plan
            yield (
                source,
                UsageRollup.objects.filter(
                    q, org=org, granularity=source, dimension=dimension, bucket__gte=a, bucket__lt=b
                ),
            )


def _raw_sums() -> dict[str, Any]:
    return {
        "requests": Count("id"),
        "errors": Count("id", filter=~Q(status=UsageRecord.Status.OK)),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cost_micros": Sum("cost_micros"),
    }


def _rollup_sums() -> dict[str, Any]:
    return {
        "requests": Sum("requests"),
        "errors": Sum("errors"),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "cost_micros": Sum("cost_micros"),
    }


def _empty() -> dict[str, int]:
    return {"requests": 0, "errors": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_micros": 0}


def _add(total: dict[str, int], row: dict[str, Any]) -> None:
    for name in total:
        total[name] += int(row.get(name) or 0)


def _finish(total: dict[str, int]) -> dict[str, Any]:
    return {
        "requests": total["requests"],
        "errors": total["errors"],
        "prompt_tokens": total["prompt_tokens"],
        "completion_tokens": total["completion_tokens"],
        "total_tokens": total["prompt_tokens"] + total["completion_tokens"],
        "cost_usd": round(total["cost_micros"] / MICROS, 6),
    }


def usage_summary(*, org, start: datetime, end: datetime, filters: dict[str, Any]) -> dict[str, Any]:
    """Totals over ``[start, end)``."""
    total = _empty()
    for source, qs in _sources(org, start, end, filters):
        _add(total, qs.aggregate(**(_raw_sums() if source == "raw" else _rollup_sums())))
    return _finish(total)


def usage_timeseries(
    *, org, start: datetime, end: datetime, bucket: str, filters: dict[str, Any]
) -> list[dict[str, Any]]:
    """One point per hour or day bucket in ``[start, end)`` (empty buckets included)."""
    points: dict[datetime, dict[str, int]] = defaultdict(_empty)
    for source, qs in _sources(org, start, end, filters, use_days=bucket == "day"):
        field = "created_at" if source == "raw" else "bucket"
        trunc = TruncDay(field) if bucket == "day" else TruncHour(field)
        sums = _raw_sums() if source == "raw" else _rollup_sums()
        for row in qs.annotate(point=trunc).values("point").annotate(**sums).order_by():
            _add(points[row["point"]], row)
    floor = floor_day if bucket == "day" else floor_hour
    step = timedelta(days=1) if bucket == "day" else timedelta(hours=1)
    out = []
    moment = floor(start)
    while moment < end and len(out) < 10000:
        out.append({"bucket": moment, **_finish(points.get(moment, _empty()))})
        moment += step
    return out


def usage_breakdown(
    *, org, start: datetime, end: datetime, group_by: str, filters: dict[str, Any]
) -> list[dict[str, Any]]:
    """Totals per provider, model, agent, user, channel or API key, costliest first."""
    record_fields = GROUPS[group_by]
    groups: dict[tuple[str, str], dict[str, int]] = defaultdict(_empty)
    for source, qs in _sources(org, start, end, filters, group_by=group_by):
        if source == "raw":
            rows = qs.values(*record_fields).annotate(**_raw_sums()).order_by()
            for row in rows:
                raw = row[record_fields[0]]
                label = (row.get("provider_type") or "") if group_by == "provider" else ""
                _add(groups[("" if raw is None else str(raw), label)], row)
        else:
            for row in qs.values("value", "label").annotate(**_rollup_sums()).order_by():
                _add(groups[(row["value"], row["label"])], row)
    items = []
    for (value, label), total in groups.items():
        item = {"key": value or None, **_finish(total)}
        if group_by == "provider":
            item["provider_type"] = label
        items.append(item)
    items.sort(key=lambda item: (-item["cost_usd"], -item["total_tokens"], str(item["key"])))
    return items
