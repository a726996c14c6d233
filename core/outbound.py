"""The one HTTP client for URLs that users supply (provider base URLs, MCP servers, web_fetch,
outgoing webhooks): it refuses private, loopback, link-local, multicast and reserved addresses,
including cloud metadata endpoints and IPv4-mapped / NAT64 / 6to4 IPv6 forms, unless the operator
allows them in ``OUTBOUND_ALLOWED_HOSTS`` (host names, ``host:port`` pairs or CIDRs).

Two checks guard every request:

- the transport checks each request's host before it is sent, so every hop of a redirect is
  checked, not only the URL the caller gave;
- the connection pool's network backend resolves the host name itself, checks every address and
  connects to the address it checked. Resolving once and connecting to what was checked closes the
  DNS-rebinding gap (a name that answers a public address to the check and a private one to the
  connect), while TLS still verifies the certificate against the host name.

Timeouts apply to connect and read everywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import cache

import anyio
import httpcore
import httpx
from django.conf import settings

from core.errors import ApplicationError
from core.loop_stream import LoopStream

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # well-known NAT64 prefix embeds an IPv4 address


class OutboundBlocked(ApplicationError):
    """A user-supplied URL points somewhere the platform must not reach."""

    status_code = 400
    code = "ERR_OUTBOUND_BLOCKED"
    message = "This address is not reachable from the platform."


def _normalise_host(host: str) -> str:
    return (host or "").strip().strip("[]").rstrip(".").lower()


@cache
def _allowlist(entries: tuple[str, ...]) -> tuple[frozenset[str], frozenset[tuple[str, int]], tuple]:
    hosts, host_ports, networks = set(), set(), []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        # Bare IPs were networks above, so a colon left here separates a port.
        host, sep, port = entry.rpartition(":")
        if sep and port.isdigit():
            host_ports.add((_normalise_host(host), int(port)))
        else:
            hosts.add(_normalise_host(entry))
    return frozenset(hosts), frozenset(host_ports), tuple(networks)


def _current_allowlist() -> tuple[frozenset[str], frozenset[tuple[str, int]], tuple]:
    return _allowlist(tuple(settings.OUTBOUND_ALLOWED_HOSTS))


def _unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4), else ``ip`` itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def _forbidden(ip: IPAddress) -> bool:
    ip = _unwrap(ip)
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
        or (isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED_ADDRESS_SPACE)
    )


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundBlocked(
            f"Cannot resolve {host}.", code="ERR_OUTBOUND_DNS", details={"host": host}
        ) from exc
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def _allowed_by_name(host: str, port: int) -> bool:
    hosts, host_ports, _networks = _current_allowlist()
    return host in hosts or (host, port) in host_ports


def _refuse_forbidden(host: str, addresses: list[IPAddress]) -> None:
    _hosts, _host_ports, networks = _current_allowlist()
    for ip in addresses:
        if any(_unwrap(ip) in net or ip in net for net in networks):
            continue
        if _forbidden(ip):
            raise OutboundBlocked(
                f"{host} resolves to {ip}, a private or internal address; an operator can allow it "
                "with OUTBOUND_ALLOWED_HOSTS.",
                details={"host": host, "address": str(ip)},
            )


def vetted_addresses(host: str, port: int | None) -> list[str] | None:
    """The addresses to connect to for ``host``, every one checked; ``None`` when the operator
    allowed the host by name (connect to the name as is). Raises OutboundBlocked otherwise."""
    host = _normalise_host(host)
    port = port or 443
    if not host:
        raise OutboundBlocked("The URL has no host.")
    if _allowed_by_name(host, port):
        return None
    addresses = _resolve(host, port)
    _refuse_forbidden(host, addresses)
    return [str(ip) for ip in addresses]


def check_host(host: str, port: int | None) -> None:
    """Raise OutboundBlocked unless ``host`` (every address it resolves to) may be reached."""
    vetted_addresses(host, port)


def _check_literal(host: str, port: int | None) -> None:
    """The cheap check of a request's host: allowlist and IP literals (names are resolved and
    checked when the connection is opened, see ``_GuardedBackend``)."""
    host = _normalise_host(host)
    port = port or 443
    if not host:
        raise OutboundBlocked("The URL has no host.")
    if _allowed_by_name(host, port):
        return
    literal = _ip_literal(host)
    if literal is not None:
        _refuse_forbidden(host, [literal])


def _default_port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def check_url(url: str) -> None:
    """Validate a user-supplied URL before storing it (scheme, host and address)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise OutboundBlocked("This is not a valid URL.", code="ERR_OUTBOUND_URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise OutboundBlocked("Only http and https URLs are allowed.", code="ERR_OUTBOUND_SCHEME")
    check_host(parsed.host, _default_port(parsed))


# --- connection level: resolve once, check, connect to what was checked ----------------------------


class _GuardedBackend(httpcore.NetworkBackend):
    """Wraps httpcore's sync network backend: connects only to vetted addresses."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        addresses = vetted_addresses(host, port)
        if addresses is None:
            return self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        last_error: Exception | None = None
        for address in addresses:
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # noqa: S101 - _resolve never returns an empty list
        raise last_error

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise OutboundBlocked("Unix sockets are not reachable from the platform.")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _GuardedAsyncBackend(httpcore.AsyncNetworkBackend):
    """Wraps httpcore's async network backend: resolution off the event loop, within the connect
    timeout; connects only to vetted addresses."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        name = _normalise_host(host)
        literal = _ip_literal(name) is not None
        if literal or _allowed_by_name(name, port or 443):
            # Nothing to resolve: check on the loop, sparing a thread hop on every new connection.
            addresses = vetted_addresses(host, port)
        else:
            try:
                with anyio.fail_after(timeout):
                    addresses = await anyio.to_thread.run_sync(
                        vetted_addresses, host, port, abandon_on_cancel=True
                    )
            except TimeoutError as exc:  # surfaces as httpx.ConnectTimeout, like a slow connect
                raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        if addresses is None:  # allowed by name: a name is resolved as usual, an address is used as it is
            if not literal:
                return await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
            addresses = [name]
        last_error: Exception | None = None
        for address in addresses:
            try:
                return await self._connect_address(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        assert last_error is not None  # noqa: S101 - _resolve never returns an empty list
        raise last_error

    async def _connect_address(self, address, port, timeout, local_address, socket_options):
        """A connection to one vetted IP address. On asyncio it is opened with the loop's own
        socket calls and handed to httpcore as a ``core.loop_stream.LoopStream`` (cheaper per read
        than its anyio stream, see there). ``anyio.connect_tcp`` races a literal address through a
        task group, an event and cancel scopes (happy eyeballs, for names): 311 us of the loop's
        CPU per connection against 163 us this way, checks included (``bench/outbound_connect.py``),
        on every new upstream connection (``bench/stream_fanout.py`` opens one per stream). Under
        another async library the backend connects as before."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # trio
            return await self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's own connections
            for option in socket_options or ():
                sock.setsockopt(*option)
            if local_address:
                sock.bind((local_address, 0))
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (address, port))
            stream = await LoopStream.from_socket(sock)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(f"connecting to {address}:{port} timed out") from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            sock.close()
            raise
        return stream

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise OutboundBlocked("Unix sockets are not reachable from the platform.")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _guard_pool(pool) -> None:
    """Swap the pool's network backend for the guarded one (httpx does not expose it)."""
    inner = getattr(pool, "_network_backend", None)
    if inner is None:  # pragma: no cover - a httpcore release that renamed the attribute
        raise RuntimeError("cannot install the outbound guard on this httpcore version")
    if isinstance(pool, httpcore.AsyncConnectionPool):
        pool._network_backend = _GuardedAsyncBackend(inner)
    else:
        pool._network_backend = _GuardedBackend(inner)


class GuardedTransport(httpx.HTTPTransport):
    """Sync transport that checks every request's host and connects only to vetted addresses."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        _guard_pool(self._pool)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _check_literal(request.url.host, _default_port(request.url))
        return super().handle_request(request)


class GuardedAsyncTransport(httpx.AsyncHTTPTransport):
    """Async transport that checks every request's host and connects only to vetted addresses."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        _guard_pool(self._pool)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _check_literal(request.url.host, _default_port(request.url))
        return await super().handle_async_request(request)


def _timeout(read: float | None) -> httpx.Timeout:
    return httpx.Timeout(
        read if read is not None else settings.OUTBOUND_READ_TIMEOUT,
        connect=settings.OUTBOUND_CONNECT_TIMEOUT,
    )


def guarded_client(*, read_timeout: float | None = None, **kwargs) -> httpx.Client:
    """An httpx.Client for user-supplied URLs (redirects are checked hop by hop)."""
    kwargs.setdefault("timeout", _timeout(read_timeout))
    return httpx.Client(transport=GuardedTransport(), **kwargs)


def guarded_async_client(
    *, read_timeout: float | None = None, limits: httpx.Limits | None = None, **kwargs
) -> httpx.AsyncClient:
    """An httpx.AsyncClient for user-supplied URLs (redirects are checked hop by hop). ``limits``
    size its connection pool (httpx ignores a client's ``limits`` once it is given a transport)."""
    kwargs.setdefault("timeout", _timeout(read_timeout))
    transport = GuardedAsyncTransport(limits=limits) if limits is not None else GuardedAsyncTransport()
    return httpx.AsyncClient(transport=transport, **kwargs)
