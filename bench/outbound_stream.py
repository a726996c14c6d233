"""What reading a streamed upstream answer costs the event loop, per chunk: httpcore's anyio stream
against the outbound guard's own (``core.loop_stream``), both on connections the guard opened, read
through httpx as the provider client reads a token stream.

Every token of every stream of ``bench/stream_fanout.py`` is one such read on the web process's
loop. This script runs ``--streams`` concurrent streams of ``--chunks`` chunks each (the listener,
in another process, sends one chunk per stream every ``--interval`` seconds, so that every read
waits for its chunk as a token read does) per side and round, and prints this thread's CPU time
per chunk read. Rounds alternate which side goes first.

    .venv/bin/python bench/outbound_stream.py [--streams 100] [--chunks 100] [--rounds 4]
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


async def _stream(chunks: int, interval: float, reader, writer) -> None:
    """The listener's answer: ``chunks`` chunks, ``interval`` apart."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    chunk = b'data: {"choices":[{"delta":{"content":"word "}}]}\n\n'
    for _ in range(chunks):
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        await asyncio.sleep(interval)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def measure(url: str, streams: int) -> tuple[float, int]:
    """(CPU seconds, chunks read) for ``streams`` concurrent streamed answers."""
    import httpx

    from core.outbound import GuardedAsyncTransport

    async def one(client) -> int:
        count = 0
        async with client.stream("GET", url) as response:
            async for _ in response.aiter_raw():
                count += 1
        return count

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(transport=GuardedAsyncTransport(limits=limits), timeout=60) as client:
        cpu = time.thread_time()
        counts = await asyncio.gather(*(one(client) for _ in range(streams)))
        return time.thread_time() - cpu, sum(counts)


async def run(port: int, args) -> None:
    import anyio.abc
    from httpcore._backends.anyio import AnyIOStream

    from core import loop_stream

    own = loop_stream.LoopStream.from_socket

    async def anyio_stream(sock):
        return AnyIOStream(await anyio.abc.SocketStream.from_socket(sock))

    sides = {"httpcore anyio": anyio_stream, "outbound guard": own}
    url = f"http://127.0.0.1:{port}/"

    async def side(name: str) -> tuple[float, int]:
        loop_stream.LoopStream.from_socket = staticmethod(sides[name])
        try:
            return await measure(url, args.streams)
        finally:
            loop_stream.LoopStream.from_socket = own

    for name in sides:  # warm both up
        await side(name)
    figures: dict[str, list[float]] = {name: [] for name in sides}
    for round_no in range(args.rounds):
        order = list(sides) if round_no % 2 == 0 else list(reversed(sides))
        for name in order:
            cpu, chunks = await side(name)
            figures[name].append(cpu / max(chunks, 1))
    print(f"{'side':<16} {'CPU/chunk':>10}   ({args.rounds} rounds x {args.streams} streams x {args.chunks})")
    for name, rounds in figures.items():
        print(f"{name:<16} {statistics.median(rounds) * 1e6:>8.1f}us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams per side and round")
    parser.add_argument("--chunks", type=int, default=100, help="chunks per stream")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between a stream's chunks")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    outbound_django_setup()
    with listener_process(_stream, args.chunks, args.interval) as port:
        asyncio.run(run(port, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
