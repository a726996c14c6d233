"""The web process's listen endpoint (``core.serve``)."""

from core.serve import endpoint


def test_the_endpoint_carries_the_backlog_and_escapes_an_ipv6_host():
    assert endpoint("127.0.0.1", 8000, 2048) == "tcp:port=8000:interface=127.0.0.1:backlog=2048"
    assert endpoint("::", 9000, 64) == "tcp:port=9000:interface=\\:\\::backlog=64"
    assert endpoint("[::1]", 80, 10) == "tcp:port=80:interface=\\:\\:1:backlog=10"


def test_twisted_parses_it_into_a_listener_with_that_backlog():
    from twisted.internet import endpoints, reactor

    parsed = endpoints.serverFromString(reactor, endpoint("::1", 8123, 777))
    assert (parsed._port, parsed._interface, parsed._backlog) == (8123, "::1", 777)
