"""What an idle WebSocket costs the server: RSS growth per authenticated, idle ``/ws`` connection.

Run from the project root::

    .venv/bin/python bench/ws_idle.py [--connections 2000] [--batch 100] [--check]

It boots the real stack itself: a throwaway SQLite database and ``var/`` in a temporary folder (or
the database of ``--database-url`` / ``DATABASE_URL``, and Redis with ``--redis-url``),
``manage.py migrate``, a user, an org and a personal API key made through ``manage.py shell``, then
one Daphne on a free loopback port with the production settings (``config.settings.base``, DEBUG
off). The file-descriptor limit is raised to its hard limit first (Daphne inherits it).

It warms the server up with a few connections (imports, thread pool, caches), closes them, reads
the server's RSS (``/proc/<pid>/status``), then opens ``--connections`` sockets in batches of
``--batch``, each authenticated with a ``connect`` request carrying the key, and leaves them idle
(no client pings). After a settling pause it reads the RSS again and prints the growth per
connection. Target: <= 100 KB per connection; ``--check`` exits 1 above it. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import manage, server_env, start_daphne, stop
from websockets.asyncio.client import connect

TARGET_KB = 100

SETUP_SCRIPT = """
import uuid
from accounts.models import Membership, Organization, Role, User
from accounts.services.keys import api_key_create
suffix = uuid.uuid4().hex[:10]
user = User.objects.create_user(email=f"bench-{suffix}@example.invalid", password=None)
org = Organization.objects.create(name=f"Bench {suffix}", slug=f"bench-{suffix}")
Membership.objects.create(org=org, user=user, role=Role.OWNER)
key, raw = api_key_create(org=org, actor=user, name="ws idle bench")
print(f"BENCH {raw} {org.pk} {user.pk}")
"""

TEARDOWN_SCRIPT = """
from accounts.models import Organization, User
Organization.objects.filter(pk="{org}").delete()
User.objects.filter(pk="{user}").delete()
"""


def raise_fd_limit(needed: int) -> int:
    """Raise the soft limit on open files to the hard limit; children (Daphne) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < needed:
        sys.exit(f"the open-files limit is {soft}; {needed} are needed (raise `ulimit -Hn`)")
    return soft


def rss_kb(pid: int) -> int:
    """Resident set size of a process in KB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


async def open_authenticated(url: str, raw_key: str):
    """One socket, authenticated with ``connect``; the client never pings (the socket stays idle)."""
    ws = await connect(url, ping_interval=None, open_timeout=60, close_timeout=5, max_queue=4)
    await ws.send(json.dumps({"type": "req", "id": "c", "method": "connect", "params": {"token": raw_key}}))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 60))
    if not answer.get("ok"):
        raise SystemExit(f"connect was refused: {answer}")
    return ws


async def open_many(url: str, raw_key: str, count: int, batch: int) -> list:
    sockets: list = []
    while len(sockets) < count:
        size = min(batch, count - len(sockets))
        sockets += await asyncio.gather(*(open_authenticated(url, raw_key) for _ in range(size)))
    return sockets


async def close_all(sockets: list) -> None:
    for start in range(0, len(sockets), 200):
        await asyncio.gather(*(ws.close() for ws in sockets[start : start + 200]), return_exceptions=True)


async def measure(url: str, raw_key: str, pid: int, args) -> tuple[int, int, int, float]:
    warm = await open_many(url, raw_key, min(100, args.connections), args.batch)
    await warm[0].send(json.dumps({"type": "req", "id": "p", "method": "ping"}))
    assert json.loads(await warm[0].recv())["ok"]
    await close_all(warm)
    await asyncio.sleep(args.settle)
    before = rss_kb(pid)
    started = time.perf_counter()
    sockets = await open_many(url, raw_key, args.connections, args.batch)
    opened_in = time.perf_counter() - started
    await asyncio.sleep(args.settle)
    after = rss_kb(pid)
    # Every socket is still alive and answers after the idle wait.
    probe = sockets[-1]
    await probe.send(json.dumps({"type": "req", "id": "p", "method": "ping"}))
    if not json.loads(await asyncio.wait_for(probe.recv(), 30))["ok"]:
        raise SystemExit("a socket did not answer ping after the idle wait")
    await close_all(sockets)
    await asyncio.sleep(args.settle)
    closed = rss_kb(pid)
    return before, after, closed, opened_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="sockets opened at once")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading RSS")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (Daphne log)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 above {TARGET_KB} KB per connection")
    args = parser.parse_args()

    limit = raise_fd_limit(2 * args.connections + 200)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ws-idle-"))
    (workdir / "var").mkdir()
    database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
    env = server_env(workdir, database_url, args.redis_url)
    process = None
    created: tuple[str, str] | None = None
    try:
        print(
            f"database: {'throwaway SQLite' if not args.database_url else 'given'}; open-files limit {limit}"
        )
        manage(env, "migrate", "--noinput")
        line = next(
            ln for ln in manage(env, "shell", "-c", SETUP_SCRIPT).splitlines() if ln.startswith("BENCH ")
        )
        _, raw_key, org_id, user_id = line.split()
        created = (org_id, user_id)
        process, base_url = start_daphne(env, workdir / "daphne.log")
        url = base_url.replace("http://", "ws://") + "/ws"
        before, after, closed, opened_in = asyncio.run(measure(url, raw_key, process.pid, args))
        per_connection = (after - before) / args.connections
        print(f"connections: {args.connections} idle, authenticated with a key (opened in {opened_in:.1f} s)")
        print(f"server RSS: {before / 1024:.1f} MB before, {after / 1024:.1f} MB with them open")
        print(
            f"            {closed / 1024:.1f} MB after closing them (freed memory stays with the allocator)"
        )
        print(f"RSS growth per connection: {per_connection:.1f} KB (target <= {TARGET_KB} KB)")
        if args.check and per_connection > TARGET_KB:
            sys.exit(1)
    finally:
        if process is not None:
            stop(process)
        if created is not None and args.database_url:
            manage(env, "shell", "-c", TEARDOWN_SCRIPT.format(org=created[0], user=created[1]))
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
