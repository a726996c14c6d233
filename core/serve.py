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

Before serving, it loads the application (Django, every app, the URLconf and the views it names)
and moves everything that exists by then out of the garbage collector's reach (``gc.freeze``):
those objects live as long as the process, and without this every full collection walked them
again. Streams allocate quickly, so full collections come every few seconds under load; each one
stops the loop (every open stream) for as long as it takes: 145-155 ms in
``bench/stream_fanout.py`` at 20 streams before, 20-45 ms after.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

APPLICATION = "config.asgi:application"


def endpoint(host: str, port: int, backlog: int) -> str:
    """The Twisted server endpoint description Daphne listens on."""
    interface = host.strip("[]").replace(":", "\\:")
    return f"tcp:port={port}:interface={interface}:backlog={backlog}"


def switch_interval_seconds(milliseconds: float) -> float:
    """The interval for ``sys.setswitchinterval``; refuses what Python would refuse, clearly."""
    if milliseconds <= 0:
        raise ValueError(f"WEB_SWITCH_INTERVAL_MS must be > 0, not {milliseconds}")
    return milliseconds / 1000.0


def load_and_freeze() -> None:
    """Load the ASGI application and everything a request needs that Django loads lazily, then
    exclude all of it from garbage collection (see the module doc)."""
    from django.urls import get_resolver

    # Sets Django up; Daphne imports the same module, which is then loaded already.
    importlib.import_module(APPLICATION.partition(":")[0])
    get_resolver().url_patterns  # noqa: B018  (imports every view module)
    gc.collect()  # what startup left behind is freed, not frozen
    gc.freeze()


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    from daphne.cli import CommandLineInterface
    from django.conf import settings

    sys.setswitchinterval(switch_interval_seconds(float(settings.WEB_SWITCH_INTERVAL_MS)))
    load_and_freeze()

    host, port, backlog = settings.HOST, int(settings.PORT), int(settings.WEB_BACKLOG)
    options = list(argv)
    if not any(arg == "--access-log" or arg.startswith("--access-log=") for arg in options):
        options = ["--access-log", os.devnull, *options]
    CommandLineInterface().run([*options, "-e", endpoint(host, port, backlog), APPLICATION])


if __name__ == "__main__":
    main(sys.argv[1:])
