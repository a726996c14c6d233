"""Smoke pass of the embedded default, run by `make test`.

Starts the stack exactly as `make run` does, with no DATABASE_URL or REDIS_URL (SQLite, in-memory
channel layer, filesystem broker) in a throw-away VAR_DIR, checks /health and /ready, then sends
Ctrl-C (SIGINT) and checks that web, worker and beat have all exited.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOT_SECONDS = 120
STOP_SECONDS = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - loopback URL we built
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    port = free_port()
    var_dir = tempfile.mkdtemp(prefix="smoke-var-")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "DJANGO_", "TEST_"))
    }
    env.update(HOST="127.0.0.1", PORT=str(port), VAR_DIR=var_dir, PYTHONUNBUFFERED="1")
    log_path = Path(var_dir) / "run.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    failure = None
    try:
        deadline = time.time() + BOOT_SECONDS
        while time.time() < deadline:
            if proc.poll() is not None:
                failure = f"`make run` exited early with {proc.returncode}"
                break
            try:
                if get(base + "/ready")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            failure = "/ready never answered 200"
        if failure is None:
            status, body = get(base + "/health")
            health = json.loads(body)
            bad = {k: v for k, v in health.get("checks", {}).items() if v.get("status") != "ok"}
            if status != 200 or health.get("status") != "ok" or bad:
                failure = f"/health answered {status}: {body}"
            else:
                print(f"/ready 200, /health 200 ok on {base} (db, cache, broker ok)")
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        try:
            proc.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            failure = failure or f"`make run` still running {STOP_SECONDS}s after Ctrl-C"
        stop_deadline = time.time() + STOP_SECONDS
        while group_alive(proc.pid) and time.time() < stop_deadline:
            time.sleep(0.2)
        if group_alive(proc.pid):
            failure = failure or "a process of the stack survived Ctrl-C"
            os.killpg(proc.pid, signal.SIGKILL)
    if failure:
        print("EMBEDDED SMOKE FAILED: " + failure)
        print(log_path.read_text()[-3000:])
        return 1
    print("Ctrl-C stopped web, worker and beat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
