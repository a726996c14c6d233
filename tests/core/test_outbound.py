"""The outbound guard: user-supplied URLs never reach loopback, private, link-local or metadata
addresses (IPv4, IPv6 and IPv4-in-IPv6 forms, names resolving there, redirect hops), except what
the operator allowlists by host, host:port or CIDR. Public addresses pass (checked without
connecting: DNS may be unavailable where the tests run)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx
import pytest

from core.outbound import (
    GuardedAsyncTransport,
    OutboundBlocked,
    check_host,
    check_url,
    guarded_async_client,
    guarded_client,
)


@pytest.fixture(autouse=True)
def _no_allowlist(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []


def _port(upstream) -> int:
    return httpx.URL(upstream.base_url).port


# --- refusals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/v1",
        "http://127.0.0.1:8080/v1",
        "http://10.0.0.1/",
        "http://192.168.1.10/",
        "http://172.16.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://localhost/",
        "http://LOCALHOST:11434/",
    ],
)
def test_private_loopback_and_metadata_urls_are_refused(url):
    with pytest.raises(OutboundBlocked) as caught:
        check_url(url)
    assert caught.value.status_code == 400
    assert caught.value.code == "ERR_OUTBOUND_BLOCKED"


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "[::1]", "::1", "::ffff:127.0.0.1", "localhost"]
)
def test_check_host_refuses_internal_hosts(host):
    with pytest.raises(OutboundBlocked):
        check_host(host, 80)


def test_a_name_resolving_to_loopback_is_refused_with_the_address():
    with pytest.raises(OutboundBlocked) as caught:
        check_host("localhost", 80)
    assert caught.value.details["host"] == "localhost"
    assert caught.value.details["address"] in {"127.0.0.1", "::1"}


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x/"])
def test_only_http_and_https_are_accepted(url):
    with pytest.raises(OutboundBlocked) as caught:
        check_url(url)
    assert caught.value.code == "ERR_OUTBOUND_SCHEME"


def test_garbage_url_is_a_clean_refusal():
    with pytest.raises(OutboundBlocked) as caught:
        check_url("http://[not-an-address/")
    assert caught.value.status_code == 400


def test_unresolvable_name_is_refused_with_a_dns_code():
    with pytest.raises(OutboundBlocked) as caught:
        check_host("no-such-host.invalid", 443)
    assert caught.value.code == "ERR_OUTBOUND_DNS"


# --- public addresses -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:93.184.216.34", "[2001:4860::8888]"]
)
def test_public_ip_literals_are_allowed(host):
    check_host(host, 443)  # no exception; IP literals are not resolved, nothing connects


def test_public_ip_url_is_allowed():
    check_url("https://93.184.216.34/v1")


# --- the allowlist ----------------------------------------------------------------------------------------


def test_allowlisted_host_name_passes(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["localhost"]
    check_url("http://localhost:11434/v1")
    check_host("LOCALHOST.", 80)


def test_allowlisted_ip_passes_but_not_its_neighbour(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    check_url("http://127.0.0.1:8000/v1")
    with pytest.raises(OutboundBlocked):
        check_url("http://127.0.0.2:8000/v1")


def test_allowlisted_host_port_passes_only_on_that_port(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["localhost:11434", "[::1]:8080"]
    check_url("http://localhost:11434/v1")
    check_url("http://[::1]:8080/v1")
    with pytest.raises(OutboundBlocked):
        check_url("http://localhost:11435/v1")
    with pytest.raises(OutboundBlocked):
        check_url("http://localhost/v1")


def test_allowlisted_cidr_covers_its_range_only(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["10.1.0.0/16", "fd00::/8"]
    check_url("http://10.1.2.3/")
    check_url("http://[fd00::5]/")
    check_url("http://[::ffff:10.1.9.9]/")  # the IPv4-mapped form of an allowed address
    with pytest.raises(OutboundBlocked):
        check_url("http://10.2.0.1/")
    with pytest.raises(OutboundBlocked):
        check_url("http://169.254.169.254/")


def test_allowlist_ignores_blank_entries_and_case(settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["", "  ", "LocalHost"]
    check_url("http://localhost/")


# --- the guarded clients -----------------------------------------------------------------------------------


def test_guarded_client_refuses_loopback_before_sending(fake_upstream):
    with guarded_client() as client, pytest.raises(OutboundBlocked):
        client.get(f"{fake_upstream.base_url}/models")


def test_guarded_client_refuses_a_name_resolving_to_loopback(fake_upstream):
    url = f"http://localhost:{_port(fake_upstream)}/v1/models"
    with guarded_client() as client, pytest.raises(OutboundBlocked) as caught:
        client.get(url)
    assert caught.value.details["host"] == "localhost"


def test_guarded_client_reaches_an_allowlisted_upstream(fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    with guarded_client() as client:
        response = client.get(f"{fake_upstream.base_url}/models")
    assert response.status_code == 200
    assert response.json()["data"][0]["id"] == "fake-model-1"


def test_cidr_allowlist_admits_a_name_resolving_inside_it(fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8", "::1/128"]
    with guarded_client() as client:
        assert client.get(f"http://localhost:{_port(fake_upstream)}/v1/models").status_code == 200


def test_redirect_to_a_private_address_is_refused_on_the_second_hop(fake_upstream, settings):
    """The fake's /redir/ answers 307 to 127.0.0.2, which no allowlist entry names."""
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    url = f"http://127.0.0.1:{_port(fake_upstream)}/redir/v1/models"
    with guarded_client(follow_redirects=True) as client, pytest.raises(OutboundBlocked) as caught:
        client.get(url)
    assert caught.value.details["address"] == "127.0.0.2"


def test_redirect_is_visible_without_following(fake_upstream, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    with guarded_client() as client:
        response = client.get(f"http://127.0.0.1:{_port(fake_upstream)}/redir/v1/models")
    assert response.status_code == 307
    assert response.headers["location"].startswith("http://127.0.0.2:")


def test_async_client_refuses_loopback_and_redirects_to_private(fake_upstream, settings):
    port = _port(fake_upstream)

    async def scenario():
        async with guarded_async_client() as client:
            with pytest.raises(OutboundBlocked):
                await client.get(f"http://127.0.0.1:{port}/v1/models")
        settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
        async with guarded_async_client(follow_redirects=True) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/v1/models")).status_code == 200
            with pytest.raises(OutboundBlocked) as caught:
                await client.get(f"http://127.0.0.1:{port}/redir/v1/models")
        return caught.value

    refused = asyncio.run(scenario())
    assert refused.details["address"] == "127.0.0.2"


def test_guarded_clients_have_connect_and_read_timeouts(settings):
    settings.OUTBOUND_CONNECT_TIMEOUT = 2.5
    settings.OUTBOUND_READ_TIMEOUT = 7.0
    with guarded_client() as client:
        assert client.timeout.connect == 2.5
        assert client.timeout.read == 7.0
    with guarded_client(read_timeout=1.0) as client:
        assert client.timeout.read == 1.0


# --- resolution happens once, and the connection goes to the address that was checked ---------------


def _fake_dns(monkeypatch, answers: dict[str, list[str]]):
    """Stand-in for the system resolver (outside the platform) answering ``answers``."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            return [
                (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in answers[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr("core.outbound.socket.getaddrinfo", getaddrinfo)


def test_a_name_with_one_private_address_among_public_ones_is_refused(monkeypatch):
    _fake_dns(monkeypatch, {"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(OutboundBlocked) as caught:
        check_host("mixed.test", 443)
    assert caught.value.details["address"] == "10.0.0.7"


def test_the_connection_goes_to_the_checked_address(fake_upstream, settings, monkeypatch):
    """The guard resolves the name itself and connects to what it checked (no second lookup that
    a rebinding DNS server could answer differently); the Host header keeps the name."""
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]
    _fake_dns(monkeypatch, {"upstream.test": ["127.0.0.1"]})
    port = _port(fake_upstream)
    with guarded_client() as client:
        response = client.get(f"http://upstream.test:{port}/v1/models")
    assert response.status_code == 200
    assert response.request.headers["host"] == f"upstream.test:{port}"


def test_a_name_rebound_to_a_private_address_is_refused_at_connect(fake_upstream, monkeypatch):
    _fake_dns(monkeypatch, {"rebind.test": ["127.0.0.1"]})
    with guarded_client() as client, pytest.raises(OutboundBlocked):
        client.get(f"http://rebind.test:{_port(fake_upstream)}/v1/models")


# --- the async connection to a checked address -------------------------------------------------------


def _no_anyio_connect(monkeypatch):
    """anyio's connect_tcp (httpcore's own way) refuses to run: the guard connects by itself."""

    async def refuse(*args, **kwargs):
        raise AssertionError("anyio.connect_tcp was used")

    monkeypatch.setattr("anyio.connect_tcp", refuse)


def _count_anyio_timeouts(monkeypatch) -> list[float | None]:
    """Every ``anyio.fail_after`` call (httpcore's way of timing each read and write), recorded."""
    import anyio

    calls: list[float | None] = []
    original = anyio.fail_after

    def counting(delay, *args, **kwargs):
        calls.append(delay)
        return original(delay, *args, **kwargs)

    monkeypatch.setattr("anyio.fail_after", counting)
    return calls


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8"])
def test_async_connections_go_to_the_checked_address_on_the_loops_own_socket(
    fake_upstream, settings, monkeypatch, allowed
):
    settings.OUTBOUND_ALLOWED_HOSTS = [allowed]
    _no_anyio_connect(monkeypatch)
    port = _port(fake_upstream)

    async def scenario():
        async with guarded_async_client() as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/v1/models") as response:
                stream = response.extensions["network_stream"]
                sock = stream.get_extra_info("socket")
                peer = stream.get_extra_info("server_addr")
                no_delay = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                body = await response.aread()
            return response.status_code, body, peer, no_delay

    timeouts = _count_anyio_timeouts(monkeypatch)
    status, body, peer, no_delay = asyncio.run(scenario())
    assert status == 200 and b'"data"' in body
    assert peer == ("127.0.0.1", port)
    assert no_delay  # as asyncio's own connections
    assert timeouts == []  # its reads and writes are timed by asyncio.timeout()


def test_a_chunked_answer_is_read_whole_and_a_silent_peer_is_httpx_read_timeout(settings, monkeypatch):
    """The guard's stream times each read itself: a streamed answer arrives chunk by chunk, and a
    peer that stops answering surfaces as httpx's ReadTimeout after the read timeout."""
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]
    _no_anyio_connect(monkeypatch)
    timeouts = _count_anyio_timeouts(monkeypatch)

    async def answer(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for word in (b"one ", b"two ", b"three"):
            writer.write(b"%x\r\n%s\r\n" % (len(word), word))
            await writer.drain()
            await asyncio.sleep(0.01)
        if b"/silent" in request:
            await asyncio.sleep(5)  # never ends its body
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            async with httpx.AsyncClient(transport=GuardedAsyncTransport(), timeout=0.3) as client:
                async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                    chunks = [chunk async for chunk in response.aiter_raw()]
                with pytest.raises(httpx.ReadTimeout):
                    async with client.stream("GET", f"http://127.0.0.1:{port}/silent") as silent:
                        async for _ in silent.aiter_raw():
                            pass
        return chunks

    chunks = asyncio.run(scenario())
    assert b"".join(chunks) == b"one two three"
    assert len(chunks) == 3  # each as it came
    assert timeouts == []


def test_an_async_connection_refused_is_httpx_connect_error(settings, monkeypatch):
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]
    _no_anyio_connect(monkeypatch)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario():
        async with guarded_async_client() as client:
            await client.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(scenario())


def test_an_async_connection_that_is_not_answered_in_time_is_httpx_connect_timeout(settings, monkeypatch):
    """A listener whose accept queue is full drops new SYNs (Linux): the connect hangs until the
    guarded client's connect timeout."""
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]
    settings.OUTBOUND_CONNECT_TIMEOUT = 0.3
    _no_anyio_connect(monkeypatch)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = []
        for _ in range(4):  # fill the accept queue; later connects hang
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            queued.append(filler)

        async def scenario():
            async with guarded_async_client() as client:
                await client.get(f"http://127.0.0.1:{port}/")

        try:
            with pytest.raises(httpx.ConnectTimeout):
                asyncio.run(scenario())
        finally:
            for filler in queued:
                filler.close()


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for 127.0.0.1, signed by its own key (the test's own CA), and that key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


def test_tls_is_negotiated_over_the_guards_own_connection(settings, monkeypatch, tmp_path):
    """Providers are HTTPS: httpcore starts TLS on the stream the guard opened, and verifies the
    certificate."""
    import ssl

    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.0/8"]
    _no_anyio_connect(monkeypatch)
    cert, key = _self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=cert)

    async def answer(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def scenario():
        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            async with httpx.AsyncClient(transport=GuardedAsyncTransport(verify=trusted)) as client:
                response = await client.get(f"https://127.0.0.1:{port}/")
                tls = response.extensions["network_stream"].get_extra_info("ssl_object")
            async with httpx.AsyncClient(transport=GuardedAsyncTransport()) as untrusting:
                with pytest.raises(httpx.ConnectError):  # the system CAs do not know this one
                    await untrusting.get(f"https://127.0.0.1:{port}/")
        return response, tls

    timeouts = _count_anyio_timeouts(monkeypatch)
    response, tls = asyncio.run(scenario())
    assert response.status_code == 200 and response.text == "ok"
    assert tls is not None
    assert timeouts == []  # the handshakes, reads and writes are timed by asyncio.timeout()
