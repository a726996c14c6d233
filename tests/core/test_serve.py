"""The web process's listen endpoint (``core.serve``)."""

import os
import subprocess
import sys

import pytest

from core.serve import endpoint, switch_interval_seconds


def test_the_endpoint_carries_the_backlog_and_escapes_an_ipv6_host():
    assert endpoint("127.0.0.1", 8000, 2048) == "tcp:port=8000:interface=127.0.0.1:backlog=2048"
    assert endpoint("::", 9000, 64) == "tcp:port=9000:interface=\\:\\::backlog=64"
    assert endpoint("[::1]", 80, 10) == "tcp:port=80:interface=\\:\\:1:backlog=10"


def test_twisted_parses_it_into_a_listener_with_that_backlog():
    from twisted.internet import endpoints, reactor

    parsed = endpoints.serverFromString(reactor, endpoint("::1", 8123, 777))
    assert (parsed._port, parsed._interface, parsed._backlog) == (8123, "::1", 777)


def test_the_switch_interval_is_given_in_milliseconds_and_must_be_positive():
    assert switch_interval_seconds(1) == 0.001
    assert switch_interval_seconds(2.5) == 0.0025
    for bad in (0, -1):
        with pytest.raises(ValueError, match="WEB_SWITCH_INTERVAL_MS"):
            switch_interval_seconds(bad)


def test_the_web_process_sets_its_switch_interval_and_freezes_what_it_loaded_before_serving():
    """main() applies the setting and freezes the loaded application (Daphne is replaced by a stub
    that reports the interval and how many objects the collector no longer walks)."""
    code = (
        "import sys, daphne.cli\n"
        "class Stub:\n"
        "    def run(self, args):\n"
        "        import gc\n"
        "        print(sys.getswitchinterval(), args[-1], gc.get_freeze_count())\n"
        "daphne.cli.CommandLineInterface = Stub\n"
        "import django; django.setup()\n"
        "from core.serve import main; main([])\n"
    )
    env = {
        **os.environ,
        "WEB_SWITCH_INTERVAL_MS": "2",
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    interval, app, frozen = out.stdout.split()
    assert float(interval) == pytest.approx(0.002)
    assert app == "config.asgi:application"
    assert int(frozen) > 10_000  # the loaded application is out of the collector's reach
