"""The web process (the Procfile's ``web``): Daphne on ``HOST``:``PORT``, serving the ASGI app.

Daphne's ``-b``/``-p`` options listen with Twisted's default backlog of 50 connections: when a few
hundred clients connect at once (a burst of streams, a reconnect storm after a deploy), the kernel
drops the rest of the handshakes and those clients see reset connections. This listens through an
endpoint string with ``WEB_BACKLOG`` (default 2048; the kernel caps it at ``net.core.somaxconn``)
and escapes an IPv6 ``HOST`` as Twisted's endpoint syntax wants. Any other Daphne option may follow
(``python -m core.serve --access-log -``); without ``--access-log`` none is written, as before.

The process runs an event loop (streams) beside view and database threads. With Python's default
GIL switch interval of 5 ms, a thread that wants the GIL waits up to 5 ms for the one holding it:
when tens of streams start at once, the loop's next delta or the next view queued behind that
many times over. ``WEB_SWITCH_INTERVAL_MS`` (default 1) sets it for this process only.
"""

from __future__ import annotations

import os
import sys


def endpoint(host: str, port: int, backlog: int) -> str:
    """The Twisted server endpoint description Daphne listens on."""
    interface = host.strip("[]").replace(":", "\\:")
    return f"tcp:port={port}:interface={interface}:backlog={backlog}"


def switch_interval_seconds(milliseconds: float) -> float:
    """The interval for ``sys.setswitchinterval``; refuses what Python would refuse, clearly."""
    if milliseconds <= 0:
        raise ValueError(f"WEB_SWITCH_INTERVAL_MS must be > 0, not {milliseconds}")
    return milliseconds / 1000.0


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    from daphne.cli import CommandLineInterface
    from django.conf import settings

    sys.setswitchinterval(switch_interval_seconds(float(settings.WEB_SWITCH_INTERVAL_MS)))

    host, port, backlog = settings.HOST, int(settings.PORT), int(settings.WEB_BACKLOG)
    options = list(argv)
    if not any(arg == "--access-log" or arg.startswith("--access-log=") for arg in options):
        options = ["--access-log", os.devnull, *options]
    CommandLineInterface().run([*options, "-e", endpoint(host, port, backlog), "config.asgi:application"])


if __name__ == "__main__":
    main(sys.argv[1:])
