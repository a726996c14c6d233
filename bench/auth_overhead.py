"""What API-key authentication costs: requests/s of one endpoint with a key vs without, side by side.

Run from the project root::

    .venv/bin/python bench/auth_overhead.py [--requests 400] [--concurrency 16] [--rounds 6]

It boots the real stack itself: a throwaway SQLite database and ``var/`` in a temporary folder
(or the database of ``--database-url`` / ``DATABASE_URL``), ``manage.py migrate``, a user, an org
and a personal API key made through ``manage.py shell``, then Daphne on a free loopback port with
the production settings (``config.settings.base``, DEBUG off).

Both sides call ``GET /api/v1/api-keys/ping``, a no-op that is public but checks a key when one is
given, so the only difference is the credential: the keyed side pays the key lookup (one indexed
query), the throttle bucket per key, and the per-key request log (one INSERT per request). The
sides alternate in rounds (anonymous first on even rounds, keyed first on odd ones) so drift in
machine load hits both alike. Rate limits are raised out of the way for both sides; the throttle
code itself still runs.

Prints requests/s per side and round, latency percentiles, and the ratio keyed / anonymous
(target >= 0.8). ``--check`` exits 1 below the target.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness import manage, percentile, server_env, start_daphne, stop

PING = "/api/v1/api-keys/ping"
TARGET = 0.8

# Made in the server's database through the service that the API uses; prints what the bench needs.
SETUP_SCRIPT = """
import uuid
from accounts.models import Membership, Organization, Role, User
from accounts.services.keys import api_key_create
suffix = uuid.uuid4().hex[:10]
user = User.objects.create_user(email=f"bench-{suffix}@example.invalid", password=None)
org = Organization.objects.create(name=f"Bench {suffix}", slug=f"bench-{suffix}")
Membership.objects.create(org=org, user=user, role=Role.OWNER)
key, raw = api_key_create(org=org, actor=user, name="auth overhead bench")
print(f"BENCH {raw} {key.pk} {org.pk} {user.pk}")
"""

TEARDOWN_SCRIPT = """
from accounts.models import Organization, User
Organization.objects.filter(pk="{org}").delete()
User.objects.filter(pk="{user}").delete()
"""


@dataclass
class Side:
    """One side of the comparison: its totals over all rounds."""

    name: str
    headers: dict[str, str]
    expect_authenticated: bool
    requests: int = 0
    seconds: float = 0.0
    per_round: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def run_batch(base_url: str, side: Side, total: int, concurrency: int, record: bool) -> float:
    """``total`` requests with ``concurrency`` connections; returns the wall time in seconds."""
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=side.headers, limits=limits, timeout=30
    ) as client:
        first = await client.get(PING)  # opens a connection and checks the side is what it claims
        body = first.json()
        if first.status_code != 200 or body.get("authenticated") is not side.expect_authenticated:
            raise SystemExit(f"{side.name}: unexpected answer {first.status_code} {body}")

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                began = time.perf_counter()
                response = await client.get(PING)
                if response.status_code != 200:
                    raise SystemExit(f"{side.name}: {response.status_code} {response.text[:200]}")
                if record:
                    side.latencies.append(time.perf_counter() - began)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    if record:
        side.requests += total
        side.seconds += elapsed
        side.per_round.append(total / elapsed)
    return elapsed


async def measure(base_url: str, raw_key: str, args) -> tuple[Side, Side, int]:
    anon = Side("anonymous", {}, expect_authenticated=False)
    keyed = Side("api key", {"Authorization": f"Bearer {raw_key}"}, expect_authenticated=True)
    keyed_sent = 0
    for side in (anon, keyed):  # warm up: imports, connection pools, query plans
        await run_batch(base_url, side, args.warmup, args.concurrency, record=False)
    keyed_sent += args.warmup + 1
    for round_no in range(args.rounds):
        order = (anon, keyed) if round_no % 2 == 0 else (keyed, anon)
        figures = []
        for side in order:
            await run_batch(base_url, side, args.requests, args.concurrency, record=True)
            figures.append(f"{side.name} {side.per_round[-1]:7.1f} req/s")
        keyed_sent += args.requests + 1
        ratio = keyed.per_round[-1] / anon.per_round[-1]
        print(f"  round {round_no + 1}: {' | '.join(figures)} | ratio {ratio:.2f}", flush=True)
    return anon, keyed, keyed_sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per side per round")
    parser.add_argument("--concurrency", type=int, default=16, help="connections per side")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=100, help="unrecorded requests per side first")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="database of the server (default: DATABASE_URL, else a throwaway SQLite file)",
    )
    parser.add_argument("--redis-url", default="", help="cache for the server (default: local memory)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when the ratio is below {TARGET}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (server log)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    env = server_env(
        workdir,
        database_url,
        args.redis_url,
        RATE_LIMIT_KEY="100000000/minute",
        RATE_LIMIT_USER="100000000/minute",
        RATE_LIMIT_ANON="100000000/minute",
    )
    engine = database_url.split(":", 1)[0]
    process = None
    ids: tuple[str, str] | None = None
    try:
        print(
            f"database: {engine}; cache: {'redis' if args.redis_url else 'local memory'}; work dir {workdir}"
        )
        manage(env, "migrate", "--noinput")
        line = next(
            x for x in manage(env, "shell", "-c", SETUP_SCRIPT).splitlines() if x.startswith("BENCH ")
        )
        _, raw_key, key_id, org_id, user_id = line.split()
        ids = (org_id, user_id)
        process, base_url = start_daphne(env, workdir / "daphne.log")
        print(
            f"daphne at {base_url}; GET {PING}; {args.rounds} rounds x {args.requests} requests per side, "
            f"concurrency {args.concurrency}, {os.cpu_count()} CPUs"
        )
        anon, keyed, keyed_sent = asyncio.run(measure(base_url, raw_key, args))

        usage = httpx.get(
            f"{base_url}/api/v1/api-keys/{key_id}/usage?limit=1",
            headers={"Authorization": f"Bearer {raw_key}"},
            timeout=30,
        ).json()
        ratio = keyed.rps / anon.rps
        median_ratio = statistics.median(k / a for k, a in zip(keyed.per_round, anon.per_round, strict=True))
        print()
        print(f"{'side':<10} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for side in (anon, keyed):
            print(
                f"{side.name:<10} {side.requests:>9} {side.rps:>9.1f} {percentile(side.latencies, 50):>8.2f} "
                f"{percentile(side.latencies, 95):>8.2f} {percentile(side.latencies, 99):>8.2f}"
            )
        print(f"request log rows of the key: {usage.get('total')} (keyed requests sent: {keyed_sent})")
        verdict = "meets" if ratio >= TARGET else "BELOW"
        print(
            f"ratio keyed/anonymous: {ratio:.2f} overall, {median_ratio:.2f} median of rounds "
            f"({verdict} {TARGET})"
        )
        return 1 if args.check and ratio < TARGET else 0
    finally:
        if process is not None:
            stop(process)
        if ids is not None and args.database_url:  # leave a shared database as we found it
            manage(env, "shell", "-c", TEARDOWN_SCRIPT.format(org=ids[0], user=ids[1]))
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
