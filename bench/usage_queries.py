"""How fast the usage reports are over a month of two million usage records (PostgreSQL).

Run from the project root::

    .venv/bin/python bench/usage_queries.py --database-url postgres://postgres@127.0.0.1:5432/dbname \
        [--records 2000000] [--repeat 30] [--keep]

It migrates the database, makes an org, bulk-inserts ``--records`` usage records spread over 30
days with ``INSERT … SELECT generate_series`` (users, agents, keys, models and channels drawn with a
skew, agents bound to a model and keys to a user, as in real traffic), runs the ``usage-rollup`` job,
then times the reports the API serves (the selectors behind ``/usage/summary``, ``/usage/timeseries``
and ``/usage/breakdown``) for the whole month, ``--repeat`` times each, and prints p50/p95 in ms.
Target: p95 <= 100 ms each. The org and its rows are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
TARGET_MS = 100.0


def setup_django(database_url: str) -> None:
    sys.path.insert(0, str(BASE_DIR))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.base"
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def insert_records(org_id: str, start: datetime, records: int) -> float:
    """Bulk insert with generate_series; returns seconds."""
    from django.db import connection

    users = [str(uuid.uuid4()) for _ in range(50)]
    agents = [str(uuid.uuid4()) for _ in range(20)]
    keys = [str(uuid.uuid4()) for _ in range(10)]
    providers = [str(uuid.uuid4()) for _ in range(2)]
    models = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4", "text-embedding-3-small"]
    started = time.perf_counter()
    chunk = 500_000
    with connection.cursor() as cursor:
        done = 0
        while done < records:
            n = min(chunk, records - done)
            cursor.execute(
                """
                INSERT INTO billing_usagerecord (
                    org_id, created_at, user_id, agent_id, api_key_id, provider_id, provider_type,
                    provider_source, model, purpose, channel, prompt_tokens, completion_tokens,
                    cost_micros, price_known, usage_estimated, latency_ms, status, error_code, request_id)
                SELECT %(org)s::uuid,
                       %(start)s::timestamptz + (random() * interval '30 days'),
                       (%(users)s::uuid[])[u + 1],
                       (%(agents)s::uuid[])[a + 1],
                       CASE WHEN u %% 5 = 0 THEN (%(keys)s::uuid[])[(u %% 10) + 1] END,
                       (%(providers)s::uuid[])[(a %% 4) / 3 + 1],
                       CASE WHEN a %% 4 = 2 THEN 'anthropic' ELSE 'openai' END,
                       'org',
                       (%(models)s::text[])[(a %% 4) + 1],
                       'chat',
                       (ARRAY['console', 'api', 'openai', 'ws', 'cron', 'webhook'])
                           [1 + floor(random() ^ 2 * 6)::int],
                       p, c, p * 2 + c * 8, true, false, 100 + random() * 900,
                       CASE WHEN random() < 0.02 THEN 'error' ELSE 'ok' END, '', ''
                FROM (
                    SELECT floor(random() ^ 3 * 50)::int AS u, floor(random() ^ 2 * 20)::int AS a,
                           (50 + random() * 2000)::int AS p, (random() * 800)::int AS c
                    FROM generate_series(1, %(n)s)
                ) AS draws
                """,
                {
                    "org": org_id,
                    "start": start,
                    "users": users,
                    "agents": agents,
                    "keys": keys,
                    "providers": providers,
                    "models": models,
                    "n": n,
                },
            )
            done += n
            print(f"  inserted {done:,} records ({time.perf_counter() - started:.1f} s)", flush=True)
        cursor.execute("ANALYZE billing_usagerecord")
    return time.perf_counter() - started


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm up (plans, caches)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--records", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not args.database_url.startswith(("postgres", "pgsql")):
        parser.error("needs --database-url (or DATABASE_URL) of a PostgreSQL database")
    setup_django(args.database_url)

    from django.db import connection

    from accounts.models import Organization
    from billing.models import UsageRollup
    from billing.selectors.usage import usage_breakdown, usage_summary, usage_timeseries
    from billing.services.usage import usage_rollup

    org = Organization.objects.create(name="bench usage", slug=f"bench-usage-{uuid.uuid4().hex[:8]}")
    start = datetime(2026, 6, 1, tzinfo=UTC)
    end = start + timedelta(days=30)
    try:
        print(f"inserting {args.records:,} usage records over 30 days …")
        seconds = insert_records(str(org.pk), start, args.records)
        print(f"insert: {seconds:.1f} s ({args.records / seconds:,.0f} records/s)")
        started = time.perf_counter()
        report = usage_rollup(now=end + timedelta(minutes=5), since=start)
        print(
            f"usage-rollup: {time.perf_counter() - started:.1f} s, "
            f"{report['hour_rows']:,} hour rows, {report['day_rows']:,} day rows"
        )
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE billing_usagerollup")
        # The report period ends 17:20 on the last day: the tail hours come from hour rollups, the
        # last 20 minutes from raw records, as in a live month.
        period_end = end - timedelta(hours=6, minutes=40)
        cases = {
            "summary (month)": lambda: usage_summary(org=org, start=start, end=period_end, filters={}),
            "summary (month, one model)": lambda: usage_summary(
                org=org, start=start, end=period_end, filters={"model": "gpt-4o"}
            ),
            "timeseries (month, day buckets)": lambda: usage_timeseries(
                org=org, start=start, end=period_end, bucket="day", filters={}
            ),
            "timeseries (week, hour buckets)": lambda: usage_timeseries(
                org=org, start=period_end - timedelta(days=7), end=period_end, bucket="hour", filters={}
            ),
            "breakdown by model (month)": lambda: usage_breakdown(
                org=org, start=start, end=period_end, group_by="model", filters={}
            ),
            "breakdown by user (month)": lambda: usage_breakdown(
                org=org, start=start, end=period_end, group_by="user", filters={}
            ),
            "breakdown by agent (month)": lambda: usage_breakdown(
                org=org, start=start, end=period_end, group_by="agent", filters={}
            ),
        }
        print(f"\n{'report':36} {'p50 ms':>8} {'p95 ms':>8}  (repeat {args.repeat})")
        failed = False
        for name, fn in cases.items():
            samples = timed(fn, args.repeat)
            p95 = p(samples, 0.95)
            failed |= p95 > TARGET_MS
            print(
                f"{name:36} {statistics.median(samples):8.1f} {p95:8.1f}"
                f"{'  over target' if p95 > TARGET_MS else ''}"
            )
        total = usage_summary(org=org, start=start, end=end, filters={})
        print(f"\nrecords counted by the summary: {total['requests']:,} (inserted {args.records:,})")
        print(f"target p95 <= {TARGET_MS:.0f} ms: {'missed' if failed else 'met'}")
    finally:
        if not args.keep:
            with connection.cursor() as cursor:
                cursor.execute("DELETE FROM billing_usagerecord WHERE org_id = %s", [str(org.pk)])
            UsageRollup.objects.filter(org=org).delete()
            org.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
