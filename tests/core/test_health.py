"""Probes: /health, /ready, /version and /metrics, including a database outage."""

import base64
from contextlib import contextmanager

import pytest
from django.db import connections


@contextmanager
def database_unreachable():
    """Point the default connection at a closed port (PostgreSQL) or an unopenable file (SQLite)."""
    conn = connections["default"]
    saved = dict(conn.settings_dict)
    conn.close()
    close_pool = getattr(conn, "close_pool", lambda: None)  # a pool keeps its old connections
    close_pool()
    if conn.vendor == "sqlite":
        conn.settings_dict["NAME"] = "/nonexistent-dir/db.sqlite3"
    else:
        conn.settings_dict["HOST"], conn.settings_dict["PORT"] = "127.0.0.1", "1"
        conn.settings_dict.setdefault("OPTIONS", {})["connect_timeout"] = 2
    try:
        yield
    finally:
        conn.close()
        close_pool()
        conn.settings_dict.clear()
        conn.settings_dict.update(saved)


@pytest.mark.django_db
def test_health_reports_every_check_ok(anon_client):
    response = anon_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"]
    assert set(body["checks"]) == {"db", "cache", "broker"}
    assert all(check["status"] == "ok" for check in body["checks"].values()), body


@pytest.mark.django_db(transaction=True)
def test_health_is_503_when_the_database_is_down(anon_client):
    with database_unreachable():
        response = anon_client.get("/health")
        ready = anon_client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["checks"]["db"]["status"] == "error"
    assert body["checks"]["cache"]["status"] == "ok"
    assert ready.status_code == 503
    assert ready.json() == {"status": "not_ready"}
    # and it recovers once the database is back
    assert anon_client.get("/ready").status_code == 200


@pytest.mark.django_db
def test_health_is_degraded_not_down_when_the_cache_fails(anon_client, monkeypatch):
    from core import health

    def broken():
        raise ConnectionError("cache down")

    monkeypatch.setattr(health, "check_cache", broken)
    response = anon_client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["cache"] == {"status": "error", "error": "ConnectionError"}


@pytest.mark.django_db
def test_ready_is_200_when_the_database_answers(anon_client):
    assert anon_client.get("/ready").json() == {"status": "ready"}


def test_version_names_version_commit_and_uptime(anon_client, settings):
    settings.GIT_COMMIT = ""
    body = anon_client.get("/version").json()
    assert set(body) == {"version", "commit", "uptime_s"}
    assert body["version"] == settings.PLATFORM_VERSION
    assert body["commit"]
    assert body["uptime_s"] >= 0


@pytest.mark.django_db
def test_metrics_expose_requests_queue_and_streams(anon_client):
    anon_client.get("/health")
    response = anon_client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert 'platform_http_requests_total{method="GET",route="health",status="200"}' in text
    assert "platform_http_request_duration_seconds_bucket" in text
    assert "platform_queue_depth" in text
    assert "platform_streams_open" in text or "# HELP platform_streams_open" in text
    assert "platform_llm_tokens_total" in text or "# HELP platform_llm_tokens_total" in text


@pytest.mark.django_db
def test_metrics_require_basic_auth_when_configured(anon_client, settings):
    settings.METRICS_BASIC_AUTH = "prom:s3cret"
    assert anon_client.get("/metrics").status_code == 401
    wrong = base64.b64encode(b"prom:nope").decode()
    assert anon_client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {wrong}").status_code == 401
    right = base64.b64encode(b"prom:s3cret").decode()
    response = anon_client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {right}")
    assert response.status_code == 200
    assert b"platform_http_requests_total" in response.content


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_a_cdn(anon_client):
    schema = anon_client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/jobs/{job_id}" in paths and "/health" in paths
    docs = anon_client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    asset = anon_client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200
