"""The web process (the Procfile's ``web``): Daphne on ``HOST``:``PORT``, serving the ASGI app.

Daphne's ``-b``/``-p`` options listen with Twisted's default backlog of 50 connections: when a few
hundred clients connect at once (a burst of streams, a reconnect storm after a deploy), the kernel
drops the rest of the handshakes and those clients see reset connections. This listens through an
endpoint string with ``WEB_BACKLOG`` (default 2048; the kernel caps it at ``net.core.somaxconn``)
and escapes an IPv6 ``HOST`` as Twisted's endpoint syntax wants. Any other Daphne option may follow
(``python -m core.serve --access-log -``); without ``--access-log`` none is written, as before.
"""

from __future__ import annotations

import os
import sys


def endpoint(host: str, port: int, backlog: int) -> str:
    """The Twisted server endpoint description Daphne listens on."""
    interface = host.strip("[]").replace(":", "\\:")
    return f"tcp:port={port}:interface={interface}:backlog={backlog}"


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    from daphne.cli import CommandLineInterface
    from django.conf import settings

    host, port, backlog = settings.HOST, int(settings.PORT), int(settings.WEB_BACKLOG)
    options = list(argv)
    if not any(arg == "--access-log" or arg.startswith("--access-log=") for arg in options):
        options = ["--access-log", os.devnull, *options]
    CommandLineInterface().run([*options, "-e", endpoint(host, port, backlog), "config.asgi:application"])


if __name__ == "__main__":
    main(sys.argv[1:])
