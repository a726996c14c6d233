"""The one HTTP client for URLs that users supply (provider base URLs, MCP servers, web_fetch,
outgoing webhooks): it refuses private, loopback, link-local, multicast and reserved addresses,
including cloud metadata endpoints and IPv4-mapped IPv6 forms, unless the operator allows them
in ``OUTBOUND_ALLOWED_HOSTS``.

The check runs in the transport, so every hop of a redirect is checked too, and on the addresses
the host name resolves to at request time. Timeouts apply to connect and read everywhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from functools import cache

import httpx
from django.conf import settings

from core.errors import ApplicationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class OutboundBlocked(ApplicationError):
    """A user-supplied URL points somewhere the platform must not reach."""

    status_code = 400
    code = "ERR_OUTBOUND_BLOCKED"
    message = "This address is not reachable from the platform."


@cache
def _allowlist(entries: tuple[str, ...]) -> tuple[set[str], set[tuple[str, int]], list]:
    hosts, host_ports, networks = set(), set(), []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        # Bare IPs were networks above, so a colon left here separates a port.
        host, sep, port = entry.rpartition(":")
        if sep and port.isdigit():
            host_ports.add((host.strip("[]"), int(port)))
        else:
            hosts.add(entry.strip("[]"))
    return hosts, host_ports, networks


def _unwrap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
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
        or (isinstance(ip, ipaddress.IPv4Address) and ip in ipaddress.ip_network("100.64.0.0/10"))
    )


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutboundBlocked(f"Cannot resolve {host}.", code="ERR_OUTBOUND_DNS") from exc
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def check_host(host: str, port: int | None) -> None:
    """Raise OutboundBlocked unless ``host`` (every address it resolves to) may be reached."""
    host = (host or "").strip("[]").lower()
    port = port or 443
    if not host:
        raise OutboundBlocked("The URL has no host.")
    hosts, host_ports, networks = _allowlist(tuple(settings.OUTBOUND_ALLOWED_HOSTS))
    if host in hosts or (host, port) in host_ports:
        return
    for ip in _resolve(host, port):
        if any(_unwrap(ip) in net or ip in net for net in networks):
            continue
        if _forbidden(ip):
            raise OutboundBlocked(
                f"{host} resolves to {ip}, a private or internal address; an operator can allow it "
                "with OUTBOUND_ALLOWED_HOSTS.",
                details={"host": host, "address": str(ip)},
            )


def check_url(url: str) -> None:
    """Validate a user-supplied URL before storing it (scheme and address)."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https"):
        raise OutboundBlocked("Only http and https URLs are allowed.", code="ERR_OUTBOUND_SCHEME")
    check_host(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))


class GuardedTransport(httpx.HTTPTransport):
    """Sync transport that checks every request's host before connecting."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        check_host(request.url.host, request.url.port or (443 if request.url.scheme == "https" else 80))
        return super().handle_request(request)


class GuardedAsyncTransport(httpx.AsyncHTTPTransport):
    """Async transport that checks every request's host (resolution off the event loop)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        await asyncio.get_running_loop().run_in_executor(None, check_host, request.url.host, port)
        return await super().handle_async_request(request)


def _timeout(read: float | None) -> httpx.Timeout:
    return httpx.Timeout(
        read if read is not None else settings.OUTBOUND_READ_TIMEOUT,
        connect=settings.OUTBOUND_CONNECT_TIMEOUT,
    )


def guarded_client(*, read_timeout: float | None = None, **kwargs) -> httpx.Client:
    """An httpx.Client for user-supplied URLs (redirects are checked hop by hop)."""
    return httpx.Client(transport=GuardedTransport(), timeout=_timeout(read_timeout), **kwargs)


def guarded_async_client(*, read_timeout: float | None = None, **kwargs) -> httpx.AsyncClient:
    """An httpx.AsyncClient for user-supplied URLs (redirects are checked hop by hop)."""
    return httpx.AsyncClient(transport=GuardedAsyncTransport(), timeout=_timeout(read_timeout), **kwargs)
