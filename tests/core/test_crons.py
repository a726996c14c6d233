"""The cron registry: jobs run from the shell, over HTTP with the cron secret, and as a Celery task."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core import crons
from core.tasks import run_cron as run_cron_task
from tests.core.test_errors import assert_envelope

SECRET = "s3cret-cron-value"


@pytest.fixture
def ticks():
    calls: list[int] = []

    def tick():
        calls.append(1)
        return {"ticks": len(calls)}

    crons.register_cron("test-tick", tick)
    yield calls
    crons._crons.pop("test-tick", None)


@pytest.fixture
def secret(settings):
    settings.CRON_SECRET = SECRET
    return SECRET


def test_the_billing_jobs_are_registered():
    assert {"usage-rollup", "reconcile-budgets"} <= set(crons.cron_names())


def test_registering_another_function_under_a_taken_name_fails(ticks):
    with pytest.raises(ValueError):
        crons.register_cron("test-tick", lambda: None)


def test_run_cron_command_runs_a_job_and_prints_its_report(ticks):
    out = StringIO()
    call_command("run_cron", "test-tick", stdout=out)
    report = json.loads(out.getvalue())
    assert report["job"] == "test-tick" and report["result"] == {"ticks": 1} and ticks == [1]


def test_run_cron_command_lists_and_refuses_unknown_jobs(ticks):
    out = StringIO()
    call_command("run_cron", "--list", stdout=out)
    assert "test-tick" in out.getvalue().split()
    with pytest.raises(CommandError):
        call_command("run_cron", "no-such-job")


@pytest.mark.django_db
def test_the_endpoint_runs_a_job_with_the_secret(anon_client, ticks, secret):
    response = anon_client.post("/api/cron/test-tick", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200 and response.json()["result"] == {"ticks": 1}
    response = anon_client.post("/api/cron/test-tick", HTTP_X_CRON_SECRET=secret)
    assert response.status_code == 200 and ticks == [1, 1]


@pytest.mark.django_db
@pytest.mark.parametrize("header", [{}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_X_CRON_SECRET": ""}])
def test_a_missing_or_wrong_secret_answers_401(anon_client, ticks, secret, header):
    assert_envelope(anon_client.post("/api/cron/test-tick", **header), 401, "ERR_CRON_SECRET")
    assert ticks == []


@pytest.mark.django_db
def test_without_a_configured_secret_every_call_is_refused(anon_client, ticks, settings):
    settings.CRON_SECRET = ""
    assert_envelope(anon_client.post("/api/cron/test-tick", HTTP_AUTHORIZATION="Bearer "), 401)


@pytest.mark.django_db
def test_an_unknown_job_answers_404(anon_client, secret):
    assert_envelope(
        anon_client.post("/api/cron/nope", HTTP_AUTHORIZATION=f"Bearer {secret}"), 404, "ERR_UNKNOWN_CRON"
    )


@pytest.mark.django_db
def test_the_billing_crons_run_over_http(anon_client, secret):
    for job in ("usage-rollup", "reconcile-budgets"):
        response = anon_client.post(f"/api/cron/{job}", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert response.status_code == 200, response.content


def test_the_celery_task_runs_a_job(ticks):
    assert run_cron_task.run("test-tick")["result"] == {"ticks": 1}


def test_beat_schedules_the_billing_crons_with_expiry(settings):
    entries = {
        e["args"][0]: e for e in settings.CELERY_BEAT_SCHEDULE.values() if e["task"] == "core.tasks.run_cron"
    }
    assert {"usage-rollup", "reconcile-budgets"} <= set(entries)
    assert all(entry["options"]["expires"] for entry in entries.values())
