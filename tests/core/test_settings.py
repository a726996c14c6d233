"""The two deployments come from one code base and differ only by environment values."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, django
from django.conf import settings
django.setup()
from channels.layers import get_channel_layer
print(json.dumps({
    "db": settings.DATABASES["default"]["ENGINE"],
    "cache": settings.CACHES["default"]["BACKEND"],
    "layer": type(get_channel_layer()).__name__,
    "broker": settings.CELERY_BROKER_URL.split(":")[0],
    "debug": settings.DEBUG,
    "beat": settings.CELERY_BEAT_SCHEDULER,
}))
"""


def run_with_env(args, env_overrides, tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "DJANGO_", "CELERY_"))
    }
    env.update({"VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings.base"})
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_embedded_default_needs_no_services(tmp_path):
    result = run_with_env(["-c", PROBE], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    wiring = json.loads(result.stdout.strip().splitlines()[-1])
    assert wiring == {
        "db": "django.db.backends.sqlite3",
        "cache": "django.core.cache.backends.locmem.LocMemCache",
        "layer": "InMemoryChannelLayer",
        "broker": "filesystem",
        "debug": False,
        "beat": "django_celery_beat.schedulers:DatabaseScheduler",
    }
    assert (tmp_path / "secret_key").exists()  # generated once, kept private
    assert oct((tmp_path / "secret_key").stat().st_mode)[-3:] == "600"


def test_production_env_switches_to_postgres_and_redis(tmp_path):
    env = {
        "DATABASE_URL": "postgres://u:p@db.internal:5432/platform",
        "REDIS_URL": "redis://cache.internal:6379/0",
        "SECRET_KEY": "x" * 60,
    }
    result = run_with_env(["-c", PROBE], env, tmp_path)
    assert result.returncode == 0, result.stderr
    wiring = json.loads(result.stdout.strip().splitlines()[-1])
    assert wiring["db"] == "django.db.backends.postgresql"
    assert wiring["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert wiring["layer"] == "RedisChannelLayer"
    assert wiring["broker"] == "redis"


@pytest.mark.parametrize("debug", ["", "false"])
def test_check_deploy_is_clean_in_a_production_like_env(tmp_path, debug):
    env = {
        "DATABASE_URL": "postgres://u:p@db.internal:5432/platform",
        "REDIS_URL": "redis://cache.internal:6379/0",
        "SECRET_KEY": "k8#Tq!" + "z9Yw4$pL" * 8,
        "ALLOWED_HOSTS": "agents.example.com",
        "HTTPS": "true",
    }
    if debug:
        env["DEBUG"] = debug
    result = run_with_env(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_access_log_is_one_json_line_per_request(tmp_path):
    script = """
import django, logging, io, json
django.setup()
from django.test import Client
stream = io.StringIO()
handler = logging.getLogger().handlers[0]
handler.setStream(stream)
Client(HTTP_HOST="localhost").get("/version", HTTP_X_REQUEST_ID="log-line-test-1")
lines = [json.loads(l) for l in stream.getvalue().splitlines() if '"core.access"' in l]
print(json.dumps(lines))
"""
    result = run_with_env(["-c", script], {"LOG_LEVEL": "INFO"}, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(lines) == 1
    line = lines[0]
    assert line["method"] == "GET" and line["path"] == "/version" and line["status"] == 200
    assert line["request_id"] == "log-line-test-1"
    assert line["duration_ms"] >= 0
    assert {"ts", "level", "logger", "org", "actor"} <= set(line)


def test_env_example_lists_every_variable_the_settings_read():
    import re

    settings_source = (ROOT / "config" / "settings" / "base.py").read_text()
    read = set(re.findall(r'env(?:\.[a-z_]+)?\(\s*"([A-Z][A-Z0-9_]+)"', settings_source))
    documented = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - documented == set(), "missing from .env.example"
    assert documented - read == set(), "documented but never read"
