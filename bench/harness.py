"""What the benchmark scripts share: free ports, the environment of a server started the way
`make run` starts it, `manage.py` calls, Daphne and the fake upstream as subprocesses, and
stopping them; a TCP listener in another process and the Django set-up of the outbound benches.
Scripts run as ``python bench/<name>.py``, so they import this as ``harness``."""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

BASE_DIR = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(workdir: Path, database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The production settings on ``database_url`` (and ``redis_url`` when given), with the
    caller's ``extra`` variables; the caller's own DATABASE_URL/REDIS_URL never leak in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings.base",
        DATABASE_URL=database_url,
        VAR_DIR=str(workdir / "var"),
        SECRET_KEY=secrets.token_urlsafe(50),
        DEBUG="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    """``manage.py <args>`` in a subprocess; exits the script with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        sys.exit(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def start_daphne(
    env: dict[str, str], log_path: Path, *, access_log: bool = True
) -> tuple[subprocess.Popen, str]:
    """Daphne on a free port, once ``/ready`` answers 200; ``access_log=False`` runs it as the
    Procfile's ``web`` does."""
    port = free_port()
    logs = ["--access-log", "-"] if access_log else []
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.serve", *logs],
            cwd=BASE_DIR,
            env={**env, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"daphne exited ({process.returncode}):\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    sys.exit(f"daphne was not ready within 60 s:\n{log_path.read_text(errors='replace')}")


def wait_port(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited ({process.returncode}):\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    process.kill()
    sys.exit(f"{what} did not listen within {timeout:.0f} s")


def start_fake(workdir: Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """The fake OpenAI-compatible upstream (tests/fakes/openai_upstream.py); returns its /v1 URL."""
    port = free_port()
    log = workdir / "fake.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "tests" / "fakes" / "openai_upstream.py"), str(port)],
            cwd=BASE_DIR,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_port(port, process, "the fake upstream", log, timeout)
    return process, f"http://127.0.0.1:{port}/v1"


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def percentile(values: list[float], pct: float) -> float:
    """The ``pct`` percentile of durations in seconds, in milliseconds (nan for no values)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000


def outbound_django_setup() -> None:
    """Django for a bench that drives ``core.outbound`` in this process: settings from the
    environment, loopback allowed by CIDR (the checked-address path, as for a provider)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("SECRET_KEY", "bench")
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    os.environ["OUTBOUND_ALLOWED_HOSTS"] = "127.0.0.0/8"
    import django

    django.setup()


def _serve(port_out, stop, handler, handler_args: tuple) -> None:
    async def main():
        answer = functools.partial(handler, *handler_args)
        server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
        port_out.put(server.sockets[0].getsockname()[1])
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()

    asyncio.run(main())


@contextmanager
def listener_process(handler, *handler_args) -> Iterator[int]:
    """A TCP listener on loopback in another process (so that serving costs the measured process
    nothing), each connection answered by ``handler(*handler_args, reader, writer)``; yields its
    port and stops it on exit."""
    ports, stop = multiprocessing.Queue(), multiprocessing.Event()
    process = multiprocessing.Process(target=_serve, args=(ports, stop, handler, handler_args), daemon=True)
    process.start()
    try:
        yield ports.get(timeout=10)
    finally:
        stop.set()
        process.join(5)
