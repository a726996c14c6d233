"""Stream fan-out: N concurrent token streams through ONE web process, against a bare relay.

Run from the project root::

    .venv/bin/python bench/stream_fanout.py [--quick] [--levels 1,20,200,500]
    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/stream_fanout.py

It starts the fake OpenAI-compatible upstream (``tests/fakes/openai_upstream.py``) in a subprocess,
migrates the database (``--database-url`` / ``DATABASE_URL``, else a throwaway SQLite file), creates
an org with a provider on the fake, an agent and an API key (through ``manage.py shell``; deleted
again at the end on a shared database), and starts Daphne as ``make run`` starts web, with the
production settings, rate limits out of the way and ``BENCH_RELAY_UPSTREAM`` pointing at the fake,
which mounts a bare relay (``chat/api/openai_relay.py``: an async view that pipes the upstream's
stream with httpx, no database, no auth).

For each level N it opens N streams at once on each side, in rotating order: ``direct`` (straight
to the fake, the baseline), ``relay``, ``/v1 raw`` (``/v1/chat/completions`` with a provider
model), ``/v1 agent`` (``model: agent:<key>``: the agent runtime, an AgentRun per request) and,
when the route exists, ``/api/v1/chat`` (the platform's own streaming turn, conversation and
messages stored). The fake streams ``--words`` words, one per delta, ``slow`` mode (50 ms apart).

Per side and level it prints the time to the first text delta (TTFT) p50/p95, what it adds to the
direct path's, tokens/s over the batch, errors, and the web process's RSS growth per open stream
(peak RSS while the streams are open minus RSS before, over N) and its CPU time per stream (user
+ system over the batches, divided by their streams: what one stream costs the server). Targets,
as ratios to the relay of the same run: the added TTFT p50 of /v1 raw, /v1 agent and /api/v1/chat
<= 1.5x the relay's added TTFT p50 at N = 1 and 20, <= 2x at 200; zero errors at 500 (a failed
stream at any level counts as a miss too). ``--check`` exits 1 when one is missed.

At N = 1 the streams go one at a time, ``--settle`` seconds apart: the sides follow each other in
a fixed cyclic order, and one side's tail work (usage rows, closing its connection) would
otherwise always land on the same next side.

``--trace`` splits each TTFT at the upstream: every stream's prompt starts with a marker, the fake
logs when it accepted the connection, read the request and sent the first delta (``FAKE_TRACE_LOG``),
and a second table shows, per side, how long the request took to reach the upstream and the first
delta to come back from it, against the direct path's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from harness import manage, percentile, server_env, start_daphne, start_fake, stop

TARGETS = {1: 1.5, 20: 1.5, 200: 2.0}
MIN_ADDED_MS = 1.0  # an added TTFT under this counts as met whatever the ratio (timer noise)

SETUP_SCRIPT = """
import uuid
from accounts.models import Membership, Organization, Role, User
from accounts.services.keys import api_key_create
from agents.models import Agent, Provider
suffix = uuid.uuid4().hex[:10]
user = User.objects.create_user(email=f"bench-{suffix}@example.invalid", password=None)
org = Organization.objects.create(name=f"Bench {suffix}", slug=f"bench-{suffix}")
Membership.objects.create(org=org, user=user, role=Role.OWNER)
provider = Provider.objects.create(
    org=org, name="fake", provider_type="openai_compat", api_base="{upstream}", api_key="sk-bench-" + suffix
)
agent = Agent.objects.create(org=org, key="bench", name="Bench", provider=provider, model="slow")
key, raw = api_key_create(org=org, actor=user, name="stream fan-out bench")
print(f"BENCH {raw} {org.pk} {user.pk}")
"""

TEARDOWN_SCRIPT = """
from accounts.models import Organization, User
Organization.objects.filter(pk="{org}").delete()
User.objects.filter(pk="{user}").delete()
"""


def stream_server_env(workdir: Path, database_url: str, redis_url: str, upstream: str) -> dict[str, str]:
    """The server's environment for the stream benches: production settings, rate limits out of
    the way, loopback upstreams allowed and the bare relay mounted on ``upstream``."""
    return server_env(
        workdir,
        database_url,
        redis_url,
        RATE_LIMIT_KEY="100000000/minute",
        RATE_LIMIT_USER="100000000/minute",
        RATE_LIMIT_ANON="100000000/minute",
        OUTBOUND_ALLOWED_HOSTS="127.0.0.1",
        BENCH_RELAY_UPSTREAM=upstream,
    )


@dataclass
class Batch:
    """One side at one level: per-stream figures of every batch run."""

    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    rss_per_stream: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the web process's CPU time over the batches
    streams: int = 0


@dataclass
class Trace:
    """--trace: the streams whose prompt carries a marker the fake upstream logs, with the client's
    own times (CLOCK_MONOTONIC ns, as the fake's)."""

    path: Path | None = None
    count: int = 0
    # marker: (side, N, sent, first delta seen)
    streams: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)

    def mark(self, side: Side, body: dict) -> tuple[dict, str | None]:
        """``body`` with its first word replaced by a new marker (when tracing)."""
        if self.path is None:
            return body, None
        self.count += 1
        marker = f"trace{self.count}"
        if side.kind == "platform":
            return {**body, "message": f"{marker} {body['message'].partition(' ')[2]}"}, marker
        first, *rest = body["messages"]
        content = first["content"].partition(" ")[2]
        return {**body, "messages": [{**first, "content": f"{marker} {content}"}, *rest]}, marker


TRACE = Trace()


@dataclass
class Side:
    name: str
    url: str
    headers: dict[str, str]
    body: dict
    kind: str = "openai"  # "openai" (chat.completion.chunk lines) or "platform" (/api/v1/chat events)
    levels: dict[int, Batch] = field(default_factory=dict)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- one stream --------------------------------------------------------------------------------


async def one_stream(client: httpx.AsyncClient, side: Side, words: int, n: int) -> tuple[float, int]:
    """(TTFT seconds, text deltas) of one stream; raises on any failure."""
    body, marker = TRACE.mark(side, side.body)
    sent_ns = time.monotonic_ns()
    began = time.perf_counter()
    ttft = None
    deltas = 0
    complete = False
    event = None
    async with client.stream("POST", side.url, json=body, headers=side.headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{response.status_code} {response.text[:200]}")
        async for line in response.aiter_lines():
            if side.kind == "platform":
                if line.startswith("event: "):
                    event = line[7:]
                    if event == "message.delta":
                        deltas += 1
                        ttft = ttft if ttft is not None else time.perf_counter() - began
                    elif event == "message.end":
                        complete = True
                    elif event == "error":
                        raise RuntimeError("error event")
                continue
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                complete = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(data[:200])
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []):
                deltas += 1
                ttft = ttft if ttft is not None else time.perf_counter() - began
    if not complete or ttft is None or deltas < words:
        raise RuntimeError(f"incomplete stream: {deltas} deltas, complete={complete}")
    if marker:
        TRACE.streams[marker] = (side.name, n, sent_ns, sent_ns + int(ttft * 1e9))
    return ttft, deltas


async def run_level(side: Side, n: int, words: int, pid: int) -> None:
    """N streams of ``side`` at once; records TTFTs, tokens/s, errors and RSS per open stream."""
    batch = side.levels.setdefault(n, Batch())
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    timeout = httpx.Timeout(120.0, connect=60.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        before = rss_bytes(pid)
        peak = before
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_bytes(pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        cpu_before = cpu_seconds(pid)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(one_stream(client, side, words, n) for _ in range(n)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
        batch.cpu_seconds += cpu_seconds(pid) - cpu_before
        batch.streams += n
        done.set()
        await sampler
    for result in results:
        if isinstance(result, BaseException):
            batch.errors += 1
            if len(batch.error_samples) < 3:
                batch.error_samples.append(f"{type(result).__name__}: {result}"[:200])
        else:
            batch.ttft.append(result[0])
            batch.tokens += result[1]
    batch.seconds += elapsed
    if n > 1:
        batch.rss_per_stream.append((peak - before) / n)


async def measure(sides: list[Side], levels: list[int], args, pid: int) -> None:
    for warm in sides:  # imports, pools, the resolution cache, query plans
        await run_level(warm, 2, args.words, pid)
        warm.levels.clear()
    for n in levels:
        # N = 500 checks errors (one batch); below it, as many batches as asked: one batch of 200
        # streams moved the ratios by a factor of two from one run to the next.
        repeats = args.samples if n == 1 else max(1, args.batches if n < 500 else 1)
        print(f"N = {n}: {repeats} batch(es) per side", flush=True)
        for repeat in range(repeats):
            shift = repeat % len(sides)
            for side in sides[shift:] + sides[:shift]:
                await run_level(side, n, args.words, pid)
                if n == 1:
                    await asyncio.sleep(args.settle)  # the last stream's tail is not the next one's
            if n > 1:
                await asyncio.sleep(0.5)  # let the fake's threads and Daphne's sockets wind down


def report(sides: list[Side], levels: list[int]) -> list[str]:
    """Print the table; returns the targets missed."""
    missed = []
    direct = sides[0]
    relay = sides[1]
    print()
    print(
        f"{'N':>4} {'side':<13} {'TTFT p50':>9} {'p95':>8} {'added p50':>10} {'added p95':>10} "
        f"{'x relay':>8} {'tokens/s':>9} {'errors':>7} {'RSS/stream':>11} {'CPU/stream':>11}"
    )
    for n in levels:
        base50 = percentile(direct.levels[n].ttft, 50)
        base95 = percentile(direct.levels[n].ttft, 95)
        relay_added = percentile(relay.levels[n].ttft, 50) - base50
        for side in sides:
            batch = side.levels[n]
            p50, p95 = percentile(batch.ttft, 50), percentile(batch.ttft, 95)
            added50, added95 = p50 - base50, p95 - base95
            ratio = added50 / relay_added if side not in (direct, relay) and relay_added > 0 else float("nan")
            rss = statistics.mean(batch.rss_per_stream) / 1024 if batch.rss_per_stream else float("nan")
            tps = batch.tokens / batch.seconds if batch.seconds else 0.0
            cpu = batch.cpu_seconds / batch.streams * 1000 if batch.streams else float("nan")
            print(
                f"{n:>4} {side.name:<13} {p50:>7.1f}ms {p95:>6.1f}ms {added50:>8.1f}ms {added95:>8.1f}ms "
                f"{ratio:>8.2f} {tps:>9.0f} {batch.errors:>7} {rss:>8.0f} KiB {cpu:>8.1f} ms"
            )
            for sample in batch.error_samples:
                print(f"       {side.name} error: {sample}")
            # A stream that failed is a miss at every level, on every side: a ratio measured over
            # the streams that happened to succeed (or over none: nan) would say nothing.
            if batch.errors:
                missed.append(f"N={n} {side.name}: {batch.errors} errors")
            if side not in (direct, relay):  # /v1 raw, /v1 agent and /api/v1/chat alike
                target = TARGETS.get(n)
                if target is not None and added50 > MIN_ADDED_MS and not ratio <= target:
                    missed.append(f"N={n} {side.name}: added TTFT p50 {ratio:.2f}x relay > {target}x")
    return missed


def trace_report(sides: list[Side], levels: list[int]) -> None:
    """--trace: where each side's TTFT goes, as p50s: until the upstream has read the request, and
    from the upstream's first delta to the client's; what each adds to the direct path's."""
    logged = {}
    for line in TRACE.path.read_text().splitlines() if TRACE.path.exists() else []:
        marker, accepted, received, first = line.split()
        logged[marker] = (int(accepted), int(received), int(first))
    rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for marker, (side, n, sent, first_seen) in TRACE.streams.items():
        if marker in logged:
            accepted, received, first = logged[marker]
            ms = 1e-6
            rows.setdefault((side, n), []).append(
                ((accepted - sent) * ms, (received - sent) * ms, (first_seen - first) * ms)
            )
    print()
    heads = f"{'to accept':>10} {'to request':>11} {'first delta':>12}"
    print(f"{'N':>4} {'side':<13} {heads}  (p50 ms; + vs direct)")
    for n in levels:
        base = None
        for side in sides:
            found = rows.get((side.name, n))
            if not found:
                continue
            p50 = [statistics.median(x[i] for x in found) for i in range(3)]
            base = base or p50
            added = " ".join(f"{p - b:+6.2f}" for p, b in zip(p50, base, strict=True))
            print(f"{n:>4} {side.name:<13} {p50[0]:>10.2f} {p50[1]:>11.2f} {p50[2]:>12.2f}  {added}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,20,200,500", help="concurrent streams per batch")
    parser.add_argument("--quick", action="store_true", help="levels 1,20,200, fewer samples")
    parser.add_argument("--samples", type=int, default=30, help="sequential streams per side at N=1")
    parser.add_argument("--batches", type=int, default=6, help="batches per side at 1 < N < 500")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.1,
        help="seconds between the streams of N=1 (so that one stream's tail is not charged to the next)",
    )
    parser.add_argument("--words", type=int, default=20, help="words (deltas) per answer, 50 ms apart")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", ""),
        help="database of the server (default: DATABASE_URL, else a throwaway SQLite file)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""), help="default: REDIS_URL")
    parser.add_argument("--no-platform-chat", action="store_true", help="leave /api/v1/chat out")
    parser.add_argument(
        "--only", default="", help="comma-separated side names to run besides direct and relay"
    )
    parser.add_argument(
        "--trace", action="store_true", help="split each TTFT at the upstream (marker in the prompt)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.quick:
        levels = (
            [n for n in levels if n <= 200] if args.levels != parser.get_default("levels") else [1, 20, 200]
        )
        args.samples, args.batches = min(args.samples, 10), 1

    workdir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    if args.trace:
        TRACE.path = workdir / "trace.log"
        os.environ["FAKE_TRACE_LOG"] = str(TRACE.path)
    fake, upstream = start_fake(workdir)
    env = stream_server_env(workdir, database_url, args.redis_url, upstream)
    process = None
    ids: tuple[str, str] | None = None
    try:
        engine = database_url.split(":", 1)[0]
        print(f"database: {engine}; cache/channels: {'redis' if args.redis_url else 'in memory'}; {workdir}")
        manage(env, "migrate", "--noinput", timeout=600)
        output = manage(env, "shell", "-c", SETUP_SCRIPT.replace("{upstream}", upstream), timeout=600)
        _, raw_key, org_id, user_id = next(x for x in output.splitlines() if x.startswith("BENCH ")).split()
        ids = (org_id, user_id)
        process, base_url = start_daphne(env, workdir / "daphne.log", access_log=False)
        prompt = " ".join(f"w{i}" for i in range(args.words - 1))  # "echo:" + words-1 = words deltas
        messages = [{"role": "user", "content": prompt}]
        auth = {"Authorization": f"Bearer {raw_key}"}
        openai_body = {"model": "slow", "messages": messages, "stream": True}
        sides = [
            Side("direct", f"{upstream}/chat/completions", {}, openai_body),
            Side("relay", f"{base_url}/v1/_bench/relay/chat/completions", {}, openai_body),
            Side("/v1 raw", f"{base_url}/v1/chat/completions", auth, openai_body),
            Side(
                "/v1 agent", f"{base_url}/v1/chat/completions", auth, {**openai_body, "model": "agent:bench"}
            ),
        ]
        probe = httpx.post(f"{base_url}/api/v1/chat", json={}, headers=auth, timeout=30)
        if not args.no_platform_chat and probe.status_code != 404:
            body = {"agent": "bench", "message": prompt, "on_disconnect": "cancel"}
            sides.append(Side("/api/v1/chat", f"{base_url}/api/v1/chat", auth, body, kind="platform"))
        if args.only:
            wanted = {"direct", "relay", *args.only.split(",")}
            sides = [side for side in sides if side.name in wanted]
        print(
            f"daphne at {base_url} (pid {process.pid}); fake upstream {upstream}; {args.words} deltas per "
            f"answer, 50 ms apart; levels {levels}; {os.cpu_count()} CPUs",
            flush=True,
        )
        asyncio.run(measure(sides, levels, args, process.pid))
        missed = report(sides, levels)
        if args.trace:
            trace_report(sides, levels)
        print()
        if missed:
            print("targets missed:\n  " + "\n  ".join(missed))
        else:
            print(
                "targets met (added TTFT p50 vs relay: <= 1.5x at 1 and 20, <= 2x at 200; no failed stream)"
            )
        return 1 if args.check and missed else 0
    finally:
        if process is not None:
            stop(process)
        stop(fake)
        if ids is not None and args.database_url:  # leave a shared database as we found it
            manage(env, "shell", "-c", TEARDOWN_SCRIPT.format(org=ids[0], user=ids[1]), timeout=600)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
