"""Usage metering: one UsageRecord per LLM call (priced when it is written) and the hourly and
daily rollups that keep month-long summaries fast."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from billing.models import UsageRecord, UsageRollup, UsageRollupState
from billing.selectors.state import OrgState, org_state, org_state_if_local, price_for
from billing.services import hotpath
from core.batch_writer import BatchWriter
from core.loop_writer import LoopRowWriter
from core.row_inserts import insert_rows

logger = logging.getLogger(__name__)

STATUSES = {choice.value for choice in UsageRecord.Status}


def _uuid(value: Any) -> UUID | None:
    if value in (None, ""):
        return None
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except (TypeError, ValueError):
        return None


def _record_values(event: dict[str, Any], state: OrgState | None = None) -> dict[str, Any]:
    org_id = event["org_id"]
    prompt = max(0, int(event.get("prompt_tokens") or 0))
    completion = max(0, int(event.get("completion_tokens") or 0))
    model = str(event.get("model") or "")[:200]
    provider_type = str(event.get("provider_type") or "")[:32]
    state = state if state is not None else org_state(org_id)
    price = price_for(org_id=org_id, model=model, provider_type=provider_type, state=state)
    status = event.get("status") if event.get("status") in STATUSES else UsageRecord.Status.ERROR
    return {
        "org_id": org_id,
        "created_at": timezone.now(),
        "user_id": _uuid(event.get("user_id")),
        "agent_id": _uuid(event.get("agent_id")),
        "api_key_id": _uuid(event.get("api_key_id")),
        "provider_id": _uuid(event.get("provider_id")),
        "provider_type": provider_type,
        "provider_source": str(event.get("provider_source") or "")[:16],
        "model": model,
        "purpose": str(event.get("purpose") or "")[:32],
        "channel": str(event.get("channel") or "")[:16],
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_micros": price.cost_micros(prompt, completion) if price is not None else 0,
        "price_known": price is not None,
        "usage_estimated": bool(event.get("usage_estimated")),
        "latency_ms": float(event.get("latency_ms") or 0),
        "status": status,
        "error_code": str(event.get("error_code") or "")[:64],
        "request_id": str(event.get("request_id") or "")[:128],
    }


def usage_record_from_event(event: dict[str, Any]) -> UsageRecord:
    """Write the record of one choke-point usage event, priced with the org's current prices.

    A call with no known price is recorded with cost 0 and ``price_known=False`` (reports show it);
    a cost cap never lets such a call through in the first place (``ERR_PRICING_UNKNOWN``).
    """
    return UsageRecord.objects.create(**_record_values(event))


def record_usage_event(event: dict[str, Any]) -> None:
    """The usage listener registered on the choke point (failures are logged by the caller): the
    same row as :func:`usage_record_from_event`, inserted without building a model instance, as
    it runs after every LLM call."""
    hotpath.insert_row(UsageRecord, _record_values(event))


def _records_write(records: list[UsageRecord]) -> None:
    insert_rows([(UsageRecord, records)])


# The records of calls that end on a server's loop (PostgreSQL): written from the loop, those
# that end at the same moment in one statement (``core.loop_writer``).
_loop_records: LoopRowWriter[UsageRecord] = LoopRowWriter(
    "usage-records",
    lambda records: [(UsageRecord, records)],
    fallback=BatchWriter("usage-records", _records_write, lambda record: _records_write([record])),
)


async def arecord_usage_event(event: dict[str, Any]) -> bool:
    """:func:`record_usage_event` from a server's event loop, without a thread: the org's prices
    are in this process's memory and the row goes out on the loop's own connection. False (nothing
    written) when it cannot (not on a server's loop, not PostgreSQL, the prices not in memory): the
    caller then records the event on a thread as usual.

    Every LLM call ends with its record; on a thread that is a wake-up and a GIL hand-over in the
    middle of the other streams the loop serves (``bench/stream_fanout.py``)."""
    if not _loop_records.on_loop():
        return False
    state = org_state_if_local(event["org_id"])
    if state is None:
        return False
    await _loop_records.write(UsageRecord(**_record_values(event, state)))
    return True


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def floor_day(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


# dimension -> (record field holding the value, record field holding the label)
ROLLUP_DIMENSIONS: dict[str, tuple[str | None, str | None]] = {
    "": (None, None),
    "provider": ("provider_id", "provider_type"),
    "model": ("model", None),
    "agent": ("agent_id", None),
    "user": ("user_id", None),
    "channel": ("channel", None),
    "key": ("api_key_id", None),
}


def _rollup_rows(records, trunc, *, granularity: str, from_rollups: bool) -> list[UsageRollup]:
    """One row per org, bucket and value of each dimension, summed from records (or hour rollups)."""
    rows: list[UsageRollup] = []
    for dimension, (value_field, label_field) in ROLLUP_DIMENSIONS.items():
        if from_rollups:
            source = records.filter(dimension=dimension)
            group = ["org_id", "point", "value", "label"]
            sums = {
                "n": Sum("requests"),
                "errs": Sum("errors"),
                "prompt": Sum("prompt_tokens"),
                "completion": Sum("completion_tokens"),
                "cost": Sum("cost_micros"),
            }
        else:
            source = records
            group = [
                "org_id",
                "point",
                *([value_field] if value_field else []),
                *([label_field] if label_field else []),
            ]
            sums = {
                "n": Count("id"),
                "errs": Count("id", filter=~Q(status=UsageRecord.Status.OK)),
                "prompt": Sum("prompt_tokens"),
                "completion": Sum("completion_tokens"),
                "cost": Sum("cost_micros"),
            }
        for row in (
            source.annotate(point=trunc).values(*group).annotate(**sums).order_by().iterator(chunk_size=5000)
        ):
            if from_rollups:
                value, label = row["value"], row["label"]
            else:
                raw = row[value_field] if value_field else ""
                value = "" if raw is None else str(raw)
                label = (row[label_field] or "") if label_field else ""
            rows.append(
                UsageRollup(
                    org_id=row["org_id"],
                    granularity=granularity,
                    bucket=row["point"],
                    dimension=dimension,
                    value=value[:200],
                    label=label[:32],
                    requests=row["n"] or 0,
                    errors=row["errs"] or 0,
                    prompt_tokens=row["prompt"] or 0,
                    completion_tokens=row["completion"] or 0,
                    cost_micros=row["cost"] or 0,
                )
            )
    return rows


@transaction.atomic
def usage_rollup(*, now: datetime | None = None, since: datetime | None = None) -> dict[str, Any]:
    """Roll every complete hour (then every complete day) not yet rolled up into UsageRollup rows.

    Idempotent: a range is deleted and recomputed, so running it twice, or with ``since`` to
    rebuild after late or repaired records, gives the same rows. Returns what it did.
    """
    now = now or timezone.now()
    state, _ = UsageRollupState.objects.select_for_update().get_or_create(id=1)
    hour_end = floor_hour(now)
    start = since or state.hours_through
    if start is None:
        first = UsageRecord.objects.order_by("created_at").values_list("created_at", flat=True).first()
        start = first or hour_end
    start = floor_hour(start)
    hour_rows = 0
    if start < hour_end:
        UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.HOUR, bucket__gte=start, bucket__lt=hour_end
        ).delete()
        records = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=hour_end)
        rows = _rollup_rows(
            records, TruncHour("created_at"), granularity=UsageRollup.Granularity.HOUR, from_rollups=False
        )
        UsageRollup.objects.bulk_create(rows, batch_size=5000)
        hour_rows = len(rows)
    state.hours_through = hour_end

    # Days are built from hour rollups once the whole day is covered by them.
    day_end = floor_day(hour_end)
    day_start = floor_day(since) if since is not None else (state.days_through or floor_day(start))
    day_rows = 0
    if day_start < day_end:
        UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.DAY, bucket__gte=day_start, bucket__lt=day_end
        ).delete()
        hourly = UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.HOUR, bucket__gte=day_start, bucket__lt=day_end
        )
        rows = _rollup_rows(
            hourly, TruncDay("bucket"), granularity=UsageRollup.Granularity.DAY, from_rollups=True
        )
        UsageRollup.objects.bulk_create(rows, batch_size=5000)
        day_rows = len(rows)
    state.days_through = max(day_end, state.days_through or day_end)
    state.save()
    return {
        "hours_through": state.hours_through.isoformat(),
        "days_through": state.days_through.isoformat(),
        "hour_rows": hour_rows,
        "day_rows": day_rows,
    }


def window_bounds(window: str, moment: datetime) -> tuple[datetime, datetime]:
    """The UTC-aligned window (hour, day, week from Monday, month) holding ``moment``: start, end."""
    moment = moment.astimezone(UTC)
    if window == "hour":
        start = floor_hour(moment)
        return start, start + timedelta(hours=1)
    day = floor_day(moment)
    if window == "day":
        return day, day + timedelta(days=1)
    if window == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end
