"""The guard's own network stream (``core.loop_stream``) under httpx: flow control both ways, a
peer that resets, keep-alive reuse and an idle connection the peer closed."""

from __future__ import annotations

import asyncio
import socket
import struct

import httpx
import pytest

from core import loop_stream
from core.loop_stream import LoopStream
from core.outbound import GuardedAsyncTransport


@pytest.fixture(autouse=True)
def _loopback_allowed(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]


async def _serve(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_body_larger_than_the_buffer_pauses_the_transport_and_arrives_whole(monkeypatch):
    monkeypatch.setattr(loop_stream, "HIGH_WATER", 8 * 1024)
    monkeypatch.setattr(loop_stream, "LOW_WATER", 2 * 1024)
    seen: list[tuple[int, bool]] = []
    received = loop_stream._Protocol.data_received

    def recording(self, data):
        received(self, data)
        seen.append((self.buffered, self.reading_paused))

    monkeypatch.setattr(loop_stream._Protocol, "data_received", recording)
    body = bytes(range(256)) * 4096  # 1 MiB

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    async def scenario():
        server, port = await _serve(answer)
        async with server, httpx.AsyncClient(transport=GuardedAsyncTransport()) as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                assert isinstance(response.extensions["network_stream"], LoopStream)
                chunks = []
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)
                    await asyncio.sleep(0)  # a slow reader: the peer's bytes pile up
        return b"".join(chunks)

    assert asyncio.run(scenario()) == body
    assert any(paused for _, paused in seen)  # the transport stopped reading at the high mark
    assert max(buffered for buffered, _ in seen) < 8 * 1024 + 256 * 1024  # one read past it at most


def test_a_large_request_body_waits_for_a_slow_peer():
    body = b"x" * (4 * 1024 * 1024)

    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        got = 0
        while got < length:
            got += len(await reader.read(16 * 1024))
            await asyncio.sleep(0.001)  # slower than the client writes: its transport pauses
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(got)), got))
        await writer.drain()
        writer.close()

    async def scenario():
        server, port = await _serve(answer)
        async with server, httpx.AsyncClient(transport=GuardedAsyncTransport(), timeout=30) as client:
            return await client.post(f"http://127.0.0.1:{port}/", content=body)

    response = asyncio.run(scenario())
    assert response.status_code == 200 and response.text == str(len(body))


def test_a_peer_that_resets_mid_body_is_httpx_read_error():
    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async def scenario():
        server, port = await _serve(answer)
        async with server, httpx.AsyncClient(transport=GuardedAsyncTransport()) as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                async for _ in response.aiter_raw():
                    pass

    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        asyncio.run(scenario())


def test_keep_alive_reuses_the_connection_and_an_idle_one_the_peer_closed_is_replaced():
    connections: list[int] = []

    async def answer(reader, writer):
        connections.append(id(writer))
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            if b"/last" in head:
                writer.close()  # the peer closes the idle keep-alive connection after this answer
                break

    async def scenario():
        server, port = await _serve(answer)
        async with server, httpx.AsyncClient(transport=GuardedAsyncTransport()) as client:
            first = await client.get(f"http://127.0.0.1:{port}/a")
            second = await client.get(f"http://127.0.0.1:{port}/last")
            await asyncio.sleep(0.05)  # the close reaches the client's idle connection
            third = await client.get(f"http://127.0.0.1:{port}/b")
        return [r.text for r in (first, second, third)]

    assert asyncio.run(scenario()) == ["ok", "ok", "ok"]
    assert len(connections) == 2  # /a and /last on one connection; /b on a new one
