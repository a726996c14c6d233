"""Find the PostgreSQL and Redis the test suite runs on; print shell exports for scripts/test.sh.

With CI=true a missing service is fatal. Without it the suite falls back to SQLite and/or local
memory, and says which marked tests it will skip.
"""

from __future__ import annotations

import os
import shlex
import sys

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/platform"
DEFAULT_REDIS = "redis://127.0.0.1:6379/3"


def postgres_ok(url: str) -> str | None:
    import psycopg

    try:
        dsn = url.replace("postgres://", "postgresql://", 1).rsplit("/", 1)[0] + "/postgres"
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def redis_ok(url: str) -> str | None:
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()
    return None


def main() -> int:
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    db_url = os.environ.get("TEST_DATABASE_URL", DEFAULT_DB)
    redis_url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS)
    problems = {"postgres": postgres_ok(db_url), "redis": redis_ok(redis_url)}
    down = {name: why for name, why in problems.items() if why}
    if down and ci:
        for name, why in down.items():
            print(f"FATAL: {name} is unreachable and CI=true: {why}", file=sys.stderr)
        return 1
    exports = {}
    services = [name for name in problems if name not in down]
    if "postgres" in services:
        exports["DATABASE_URL"] = db_url
    if "redis" in services:
        exports["REDIS_URL"] = redis_url
    for name, why in down.items():
        print(
            f"WARNING: {name} is unreachable ({why}); tests marked '{name}' will be SKIPPED "
            f"and the suite runs on {'SQLite' if name == 'postgres' else 'local memory'}.",
            file=sys.stderr,
        )
    for name in ("DATABASE_URL", "REDIS_URL"):
        print(f"unset {name}")
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    print(f"export TEST_SERVICES={shlex.quote(','.join(services))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
