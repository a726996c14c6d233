"""httpcore's network stream for a connection the outbound guard opened, on asyncio's own
transport and protocol.

httpcore's anyio stream pays, on every read of every streamed answer: ``anyio.fail_after`` (sniffio
and two cancel scopes), and anyio's ``SocketStream.receive``, which resumes the transport's
reading before it waits and pauses it after (two ``epoll_ctl`` calls and the selector's
bookkeeping per chunk). Here the transport keeps reading into a buffer, as asyncio's own streams
do, with flow control only when the buffer grows past ``HIGH_WATER``; a read waits on a future in
an ``asyncio.timeout()`` scope. At 20 or 200 chat streams that is a chunk every 50 ms per stream,
all on the web process's loop (``bench/stream_fanout.py``).

Errors map as httpcore's anyio backend maps them (ReadError, ReadTimeout, WriteError,
WriteTimeout; ConnectError and ConnectTimeout for the TLS handshake), so callers classify them as
before.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any

import httpcore
from httpcore._utils import is_socket_readable

HIGH_WATER = 256 * 1024  # bytes buffered before the transport stops reading
LOW_WATER = 64 * 1024  # ... and resumes


class _Protocol(asyncio.Protocol):
    """Buffers what the transport reads and wakes the one reader; tracks the writer's pause."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: BaseException | None = None
        self.closed = False
        self.reading_paused = False
        self.read_waiter: asyncio.Future | None = None
        self.write_waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport (a half-closed upstream has nothing more to say)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.error = exc
        self._wake_reader()
        if self.write_waiter is not None and not self.write_waiter.done():
            self.write_waiter.set_result(None)

    def pause_writing(self) -> None:
        if self.write_waiter is None or self.write_waiter.done():
            self.write_waiter = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.write_waiter is not None and not self.write_waiter.done():
            self.write_waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            chunk, rest = chunk[:max_bytes], chunk[max_bytes:]
            self.chunks.appendleft(rest)
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered <= LOW_WATER and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk


class LoopStream(httpcore.AsyncNetworkStream):
    """One connection as httpcore's HTTP/1.1 and HTTP/2 code drive it."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol  # its ``transport`` is the connection's, TLS or not
        transport = protocol.transport
        # Read now: a closed TLS transport no longer answers get_extra_info.
        self._extra = {
            "ssl_object": transport.get_extra_info("ssl_object"),
            "client_addr": transport.get_extra_info("sockname"),
            "server_addr": transport.get_extra_info("peername"),
            "socket": transport.get_extra_info("socket"),
        }

    @classmethod
    async def from_socket(cls, sock: socket.socket) -> LoopStream:
        """Wrap a connected, non-blocking socket (the guard connected it to a vetted address)."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: _Protocol(loop), sock=sock)
        return cls(protocol)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof or protocol.closed:
                if protocol.error is not None:
                    raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
                return b""
            protocol.read_waiter = waiter = protocol.loop.create_future()
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError as exc:
                raise httpcore.ReadTimeout("timed out reading from the upstream") from exc
            finally:
                protocol.read_waiter = None
        return protocol.take(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.closed or protocol.transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        protocol.transport.write(buffer)
        waiter = protocol.write_waiter
        if waiter is not None and not waiter.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(waiter)
            except TimeoutError as exc:
                raise httpcore.WriteTimeout("timed out writing to the upstream") from exc
        if protocol.closed and protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error))

    async def aclose(self) -> None:
        self._protocol.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        protocol = self._protocol
        try:
            async with asyncio.timeout(timeout):
                transport = await protocol.loop.start_tls(
                    protocol.transport, protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            protocol.transport.close()
            raise httpcore.ConnectTimeout("the TLS handshake timed out") from exc
        except OSError as exc:  # ssl.SSLError and ConnectionError among them
            protocol.transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            protocol.transport.close()
            raise
        protocol.transport = transport
        return LoopStream(protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # the pool asks before reusing an idle connection
            protocol = self._protocol
            return bool(protocol.chunks or protocol.eof or protocol.closed) or is_socket_readable(
                self._extra["socket"]
            )
        return self._extra.get(info)
