"""What opening an upstream connection costs the event loop: httpcore's own anyio connect against
the outbound guard's (``core.outbound``, which connects to the address it checked with the loop's
own socket calls).

Every stream of ``bench/stream_fanout.py`` opens a connection (the fake upstream closes each one),
and that CPU is spent on the web process's loop, on the path to the stream's first token. This
script opens ``--connections`` connections one after another on one asyncio loop, per side and
round, to a listener in another process (so that accepting them costs this process nothing), and
prints wall time and this thread's CPU time per connection. Rounds alternate which side goes first.

    .venv/bin/python bench/outbound_connect.py [--connections 2000] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import listener_process, outbound_django_setup  # noqa: E402


async def _close(reader, writer) -> None:
    """The listener's answer: accept and close."""
    writer.close()


async def measure(connect, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds per connection over ``n`` connections opened and closed in turn."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(n):
        stream = await connect()
        await stream.aclose()
    return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n


async def run(port: int, args) -> None:
    from httpcore._backends.anyio import AnyIOBackend

    from core.outbound import _GuardedAsyncBackend

    anyio_backend = AnyIOBackend()
    guarded = _GuardedAsyncBackend(AnyIOBackend())
    sides = {
        "httpcore anyio": lambda: anyio_backend.connect_tcp("127.0.0.1", port, timeout=5),
        "outbound guard": lambda: guarded.connect_tcp("127.0.0.1", port, timeout=5),
    }
    for connect in sides.values():  # warm both up
        await measure(connect, 50)
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for round_no in range(args.rounds):
        order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        for name in order:
            figures[name].append(await measure(sides[name], args.connections))
    print(f"{'side':<16} {'wall/conn':>10} {'CPU/conn':>10}   ({args.rounds} rounds x {args.connections})")
    for name, rounds in figures.items():
        wall = statistics.median(w for w, _ in rounds) * 1e6
        cpu = statistics.median(c for _, c in rounds) * 1e6
        print(f"{name:<16} {wall:>8.0f}us {cpu:>8.0f}us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000, help="connections per side and round")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    outbound_django_setup()
    with listener_process(_close) as port:
        asyncio.run(run(port, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
