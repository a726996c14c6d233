"""A stream's time to its first token inside the web process: `config.asgi.application` called
directly, no server and no client sockets, against the same relay and fake upstream as
``stream_fanout.py``.

Run from the project root (PostgreSQL and Redis, as the server would use them)::

    DATABASE_URL=postgres://… REDIS_URL=redis://… .venv/bin/python bench/stream_inprocess.py
    … bench/stream_inprocess.py --n 20                   # 20 requests at once per sample
    … bench/stream_inprocess.py --profile agent          # cProfile of the sequential agent requests

``stream_fanout.py`` measures what a client sees, and its figures move by 10-30 % from one run to
the next on a 2-core machine that also runs the client and the fake. This one leaves Daphne, the
client's sockets and the scheduling of three processes out: what is left is the web process's own
path from the ASGI call to the first ``content`` chunk of each side (``relay``, ``raw``, ``agent``,
``chat``), which moves by a few percent. It is the tool to tell whether a change to that path
helps (compare the sides within one run, or two trees in alternating runs with ``--root``); the
targets are checked by ``stream_fanout.py`` alone.

It uses the production settings as ``stream_fanout.py`` does (rate limits out of the way,
``BENCH_RELAY_UPSTREAM`` set), creates its org, agent and key with the same script
(``manage.py shell``), and deletes them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIDES = ("relay", "raw", "agent", "chat")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1, help="requests at once per sample (default 1)")
    parser.add_argument("--samples", type=int, default=60, help="samples per side")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)}")
    parser.add_argument("--words", type=int, default=5, help="words (deltas) per answer")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds between requests at --n 1")
    parser.add_argument("--profile", choices=SIDES, help="cProfile --samples sequential requests of a side")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--root", default="", help="the project tree to measure (default: this one)")
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        parser.error("needs --database-url (or DATABASE_URL) on PostgreSQL, as the server would use")
    return args


def set_up(args: argparse.Namespace, root: Path, workdir: Path):
    """Start the fake, create the bench's rows (``manage.py shell``, as ``stream_fanout.py``
    does), set up Django in this process; returns (fake, application, raw key, tear-down)."""
    sys.path[:0] = [str(root), str(root / "bench")]
    os.chdir(root)
    import stream_fanout
    from harness import manage, start_fake, stop

    fake, upstream = start_fake(workdir)
    env = stream_fanout.stream_server_env(workdir, args.database_url, args.redis_url, upstream)
    try:
        output = manage(env, "shell", "-c", stream_fanout.SETUP_SCRIPT.replace("{upstream}", upstream))
    except SystemExit:  # manage.py failed (and said why)
        stop(fake)
        raise
    _, raw_key, org_id, user_id = next(x for x in output.splitlines() if x.startswith("BENCH ")).split()
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from config.asgi import application

    def tear_down() -> None:
        manage(env, "shell", "-c", stream_fanout.TEARDOWN_SCRIPT.format(org=org_id, user=user_id))

    return fake, application, raw_key, tear_down


class Caller:
    """One side's request, made through the ASGI application."""

    def __init__(self, application, raw_key: str, words: int) -> None:
        self.application = application
        prompt = " ".join(f"w{i}" for i in range(words - 1))
        body = {"model": "slow", "messages": [{"role": "user", "content": prompt}], "stream": True}
        chat = {"agent": "bench", "message": prompt, "on_disconnect": "cancel"}
        self.sides = {
            "relay": ("/v1/_bench/relay/chat/completions", None, body, b'"content"'),
            "raw": ("/v1/chat/completions", raw_key, body, b'"content"'),
            "agent": ("/v1/chat/completions", raw_key, {**body, "model": "agent:bench"}, b'"content"'),
            "chat": ("/api/v1/chat", raw_key, chat, b"message.delta"),
        }

    async def first_token_ms(self, side: str) -> float:
        """Milliseconds from the ASGI call to the first body chunk that carries text; the whole
        response is read."""
        path, key, body, marker = self.sides[side]
        data = json.dumps(body).encode()
        headers = [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(data)).encode()),
        ]
        if key:
            headers.append((b"authorization", f"Bearer {key}".encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        finished = asyncio.Event()
        state: dict = {"sent": False, "status": None, "first": None}

        async def receive() -> dict:
            if not state["sent"]:
                state["sent"] = True
                return {"type": "http.request", "body": data, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                return
            chunk = message.get("body", b"")
            if state["first"] is None and marker in chunk and b'"content":""' not in chunk.replace(b" ", b""):
                state["first"] = time.perf_counter() - began
            if not message.get("more_body"):
                finished.set()

        began = time.perf_counter()
        await self.application(scope, receive, send)
        if state["status"] != 200 or state["first"] is None:
            raise RuntimeError(f"{side}: status {state['status']}, no text chunk")
        return state["first"] * 1000


async def measure(caller: Caller, args: argparse.Namespace) -> None:
    sides = args.sides.split(",")
    for side in sides:  # imports, pools, caches, query plans
        for _ in range(3):
            await caller.first_token_ms(side)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.samples):
            await caller.first_token_ms(args.profile)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
        return
    figures: dict[str, list[float]] = {side: [] for side in sides}
    for sample in range(args.samples):
        # In rotating order, each request after a pause: the tail work of the one before (its
        # usage row, its run's end) would otherwise always land on the same next side.
        shift = sample % len(sides)
        for side in sides[shift:] + sides[:shift]:
            if args.n == 1:
                figures[side].append(await caller.first_token_ms(side))
                await asyncio.sleep(args.settle)
            else:
                batch = await asyncio.gather(*(caller.first_token_ms(side) for _ in range(args.n)))
                figures[side].append(statistics.median(batch))
                await asyncio.sleep(0.2)
    what = "first token" if args.n == 1 else f"median first token of {args.n} at once"
    print(f"{what}, ms from the ASGI call ({args.samples} samples per side)")
    for side in sides:
        values = figures[side]
        quartiles = statistics.quantiles(values, n=4)
        median = statistics.median(values)
        print(f"  {side:6} p50 {median:7.2f}   p25 {quartiles[0]:7.2f}   p75 {quartiles[2]:7.2f}")


def main() -> int:
    args = parse_args()
    root = Path(args.root).resolve() if args.root else Path(__file__).resolve().parent.parent
    workdir = Path(tempfile.mkdtemp(prefix="bench-inprocess-"))
    fake, application, raw_key, tear_down = set_up(args, root, workdir)
    from harness import stop

    try:
        asyncio.run(measure(Caller(application, raw_key, args.words), args))
    finally:
        stop(fake)
        tear_down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
