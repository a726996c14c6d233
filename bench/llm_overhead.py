"""What the LLM choke point costs: a streamed completion through ``agents.llm.astream`` vs the same
request straight to the upstream with the ``openai`` SDK, side by side.

Run from the project root::

    .venv/bin/python bench/llm_overhead.py [--requests 200] [--concurrency 1,20] [--rounds 4]

It starts the fake OpenAI-compatible upstream (``tests/fakes/openai_upstream.py``) in a subprocess
on a free loopback port, sets Django up in this process with the production settings
(``config.settings.base``) on a throwaway SQLite database in a temporary folder (or the database of
``--database-url`` / ``DATABASE_URL``), migrates it and creates an org with one Provider row
pointing at the fake (deleted again at the end on a shared database). A usage listener is
registered, as billing will, so the usage event is part of what is measured.

Per concurrency level, each side sends ``--requests`` streamed requests (``stream_options.
include_usage``) over ``concurrency`` workers, in ``--rounds`` rounds that rotate which side goes
first, so drift in machine load hits all alike. The sides: the SDK straight to the fake with its
default HTTP client (the baseline the targets use); two controls, the SDK straight to the fake
over plain ``httpx`` (the HTTP stack under the choke point) and over the outbound guard's client
(``core.outbound.guarded_async_client``, which the choke point's SDK client is built on), which
tell the choke point's own cost from the HTTP library's and the guard's; and ``astream``. Per
request it records the time to the first text delta (TTFT) and to the complete answer (the end of
the stream; for the choke point the ``done`` chunk, which the usage event follows off the streaming
path). It prints p50/p95 of every side and the milliseconds the choke point adds.

Targets: at concurrency 1 the choke point adds <= 3 ms to the p50 TTFT; at 20, the added p50 TTFT
is <= 25 % of the direct path's p50 TTFT. ``--check`` exits 1 when a target is missed.

``--cap`` adds a side ``choke point + cap``: the same calls for a second org with an org-wide spend
cap (billing's reserve before the call and settle after it, on the database), so the difference of
the two choke-point sides is what cap enforcement adds to a real streamed call on the server's
event loop (issue 8's target: <= 3 ms at p50, concurrency 20). ``bench/cap_overhead.py`` measures
the guard alone with threads hammering it back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from harness import percentile, start_fake

BASE_DIR = Path(__file__).resolve().parent.parent
MODEL = "fake-model-1"


@dataclass
class Side:
    """One side of the comparison: per-request times in seconds."""

    name: str
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    cpu: float = 0.0  # process CPU seconds (every thread) spent on its measured batches
    calls: int = 0


def setup_django(workdir: Path, database_url: str, redis_url: str) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DATABASE_URL=database_url,
        VAR_DIR=str(workdir / "var"),
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="false",
        LOG_LEVEL="WARNING",
        OUTBOUND_ALLOWED_HOSTS="127.0.0.1,localhost",
        OPENAI_API_KEY="",
        OPENAI_BASE_URL="",
    )
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    sys.path.insert(0, str(BASE_DIR))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def create_rows(base_url: str):
    from accounts.models import Organization
    from agents.models import Provider

    suffix = uuid.uuid4().hex[:10]
    org = Organization.objects.create(name=f"LLM bench {suffix}", slug=f"llm-bench-{suffix}")
    Provider.objects.create(org=org, name="fake", api_base=base_url, api_key=f"sk-bench-{suffix}")
    return org


async def one_direct(client, messages, side: Side, record: bool) -> None:
    began = time.perf_counter()
    first = None
    stream = await client.chat.completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    if record:
        side.ttft.append(first - began)
        side.total.append(time.perf_counter() - began)


async def one_choke(org, messages, side: Side, record: bool) -> None:
    from contextlib import aclosing

    from agents.llm import astream

    began = time.perf_counter()
    first = None
    done = None
    async with aclosing(astream(org=org, messages=messages, model=MODEL, purpose="bench")) as chunks:
        async for chunk in chunks:
            if first is None and chunk.type == "delta":
                first = time.perf_counter()
            elif chunk.type == "done":
                done = time.perf_counter()  # the whole answer is in hand; the usage event follows
    if record:
        side.ttft.append(first - began)
        side.total.append(done - began)


async def batch(call, total: int, concurrency: int) -> None:
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def measure(org, base_url: str, concurrency: int, args, cap_org=None) -> list[Side]:
    import httpx
    from openai import AsyncOpenAI

    from core.outbound import guarded_async_client

    def sdk(http_client=None):
        return AsyncOpenAI(base_url=base_url, api_key="sk-direct", max_retries=0, http_client=http_client)

    clients = {
        # The SDK as an app would use it (its default HTTP client): the baseline of the targets.
        "direct SDK": sdk(),
        # Controls: plain httpx (the HTTP stack under the choke point), and the outbound guard's
        # client (what the choke point's SDK client is made of), to tell the choke point's own
        # cost from the HTTP library's and the guard's.
        "SDK + httpx": sdk(httpx.AsyncClient(timeout=60)),
        "SDK + guard": sdk(guarded_async_client()),
    }
    messages = [{"role": "user", "content": " ".join(f"word{i}" for i in range(args.words))}]
    names = [*clients, "choke point"] + (["choke point + cap"] if cap_org is not None else [])
    sides = {name: Side(name) for name in names}

    def call_for(name):
        if name == "choke point":
            return lambda record: one_choke(org, messages, sides[name], record)
        if name == "choke point + cap":
            return lambda record: one_choke(cap_org, messages, sides[name], record)
        return lambda record: one_direct(clients[name], messages, sides[name], record)

    calls = {name: call_for(name) for name in sides}
    # Warm up every side: imports, clients, connection setup, the resolution cache.
    for call in calls.values():
        await batch(lambda call=call: call(False), concurrency * 2, concurrency)
    per_round = max(1, args.requests // args.rounds)
    order = list(calls)
    for round_no in range(args.rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:  # rotate who goes first
            cpu_before = time.process_time()
            await batch(lambda name=name: calls[name](True), per_round, concurrency)
            sides[name].cpu += time.process_time() - cpu_before
            sides[name].calls += per_round
    for client in clients.values():
        await client.close()
    return list(sides.values())


def report(concurrency: int, sides: list[Side]) -> tuple[float, float]:
    by_name = {side.name: side for side in sides}
    choke = by_name["choke point"]
    bases = [side for side in sides if not side.name.startswith("choke point")]
    direct = bases[0]
    print(f"\nconcurrency {concurrency}: {len(direct.ttft)} streamed requests per side")
    print(
        f"  {'side':<22} {'TTFT p50':>9} {'TTFT p95':>9} {'total p50':>10} {'total p95':>10} "
        f"{'CPU/call':>9}   (ms)"
    )
    for side in sides:
        print(
            f"  {side.name:<22} {percentile(side.ttft, 50):>9.2f} {percentile(side.ttft, 95):>9.2f} "
            f"{percentile(side.total, 50):>10.2f} {percentile(side.total, 95):>10.2f} "
            f"{1000 * side.cpu / max(1, side.calls):>9.2f}"
        )
    for base in bases:
        added = [
            percentile(getattr(choke, attr), pct) - percentile(getattr(base, attr), pct)
            for attr, pct in (("ttft", 50), ("ttft", 95), ("total", 50), ("total", 95))
        ]
        label = f"added vs {base.name}"
        print(f"  {label:<22} {added[0]:>9.2f} {added[1]:>9.2f} {added[2]:>10.2f} {added[3]:>10.2f}")
    capped = by_name.get("choke point + cap")
    if capped is not None:
        cap_added = percentile(capped.ttft, 50) - percentile(choke.ttft, 50)
        total_added = percentile(capped.total, 50) - percentile(choke.total, 50)
        print(
            f"  added by cap enforcement: TTFT p50 {cap_added:.2f} ms, total p50 {total_added:.2f} ms "
            f"(target <= 3 ms: {'met' if cap_added <= 3.0 else 'MISSED'})"
        )
    return percentile(choke.ttft, 50) - percentile(direct.ttft, 50), percentile(direct.ttft, 50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per side per concurrency")
    parser.add_argument("--concurrency", default="1,20", help="comma list of concurrency levels")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per concurrency")
    parser.add_argument("--words", type=int, default=8, help="words of the prompt (the reply echoes it)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="database for the Provider row (default: DATABASE_URL, else a throwaway SQLite file)",
    )
    parser.add_argument("--redis-url", default="", help="cache (default: local memory)")
    parser.add_argument(
        "--no-listener", action="store_true", help="register no usage listener (isolates its cost)"
    )
    parser.add_argument("--cap", action="store_true", help="add a side under an org-wide spend cap")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-llm-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    fake = None
    org = cap_org = None
    try:
        fake, base_url = start_fake(workdir, timeout=20)
        setup_django(workdir, database_url, args.redis_url)
        from agents.registries import register_usage_listener

        org = create_rows(base_url)
        if args.cap:
            from billing.services.caps import usage_cap_policy_create

            cap_org = create_rows(base_url)
            # Never reached: every call reserves and settles, none is refused.
            usage_cap_policy_create(org=cap_org, actor=None, name="bench", window="day", max_tokens=10**12)
        events: list[dict] = []
        if not args.no_listener:
            register_usage_listener(events.append)  # billing will listen; its hop is part of the cost
        print(
            f"database: {database_url.split(':', 1)[0]}; fake upstream {base_url} (subprocess); "
            f"{args.words}-word prompt, ~{args.words + 1} deltas 10 ms apart; {os.cpu_count()} CPUs"
        )
        failed = False
        for level in [int(x) for x in args.concurrency.split(",") if x.strip()]:
            events.clear()
            sides = asyncio.run(measure(org, base_url, level, args, cap_org=cap_org))
            added_ttft, direct_ttft = report(level, sides)
            calls = sum(len(side.ttft) for side in sides if side.name.startswith("choke point"))
            warm = 2 * level * (2 if cap_org is not None else 1)
            if not args.no_listener:
                assert len(events) == calls + warm, "one usage event per call"  # noqa: S101
            if level == 1:
                ok = added_ttft <= 3.0
                verdict = "met" if ok else "MISSED"
                print(f"  target: added TTFT p50 <= 3 ms -> {added_ttft:.2f} ms ({verdict})")
            else:
                limit = 0.25 * direct_ttft
                ok = added_ttft <= limit
                print(
                    f"  target: added TTFT p50 <= 25% of direct TTFT p50 ({limit:.2f} ms) -> "
                    f"{added_ttft:.2f} ms ({'met' if ok else 'MISSED'})"
                )
            failed = failed or not ok
            print(f"  usage events: {len(events)} for {calls + warm} choke-point calls")
        return 1 if args.check and failed else 0
    finally:
        if args.database_url:  # leave a shared database as we found it
            for row in (org, cap_org):
                if row is not None:
                    row.delete()
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
