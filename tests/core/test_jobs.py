"""Background jobs: the job endpoint for owner, member, outsider and anonymous callers, the state
machine of the job services, and ``run_job`` executed by a real Celery worker on the broker the
test settings configure (Redis when REDIS_URL is set, else the filesystem transport)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from config.celery_app import app as celery_app
from core.errors import ValidationError
from core.models import Job
from core.services import (
    job_cancel,
    job_create,
    job_fail,
    job_fail_stale,
    job_progress,
    job_start,
    job_succeed,
    jobs_progress,
    jobs_succeed,
)
from core.tasks import run_job
from tests.conftest import client_for
from tests.core import views_for_tests  # noqa: F401  (registers the test.* job kinds)
from tests.factories import UserFactory
from tests.polling import wait_for

JOB_FIELDS = {
    "id",
    "kind",
    "status",
    "percent",
    "message",
    "result",
    "error",
    "org",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
}


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    return error


def new_job(**fields) -> Job:
    fields.setdefault("kind", "test.echo")
    return job_create(enqueue=False, **fields)


def reload(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


# --- GET /api/v1/jobs/{id} ---------------------------------------------------------------------


def test_owner_reads_a_job_of_their_org(owner_client, org, owner):
    job = new_job(org=org, actor=owner, payload={"a": 1}, message="queued")

    response = owner_client.get(f"/api/v1/jobs/{job.pk}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == JOB_FIELDS
    assert body["id"] == str(job.pk)
    assert body["kind"] == "test.echo"
    assert body["status"] == "pending"
    assert body["percent"] == 0
    assert body["message"] == "queued"
    assert body["result"] is None
    assert body["error"] is None
    assert body["org"] == str(org.pk)
    assert body["created_at"]
    assert body["started_at"] is None and body["finished_at"] is None


def test_member_reads_a_job_of_their_org(member_client, org, owner):
    job = new_job(org=org, actor=owner)

    assert member_client.get(f"/api/v1/jobs/{job.pk}").status_code == 200


def test_finished_job_shows_result_and_error(owner_client, org, owner):
    done = new_job(org=org, actor=owner)
    job_succeed(job_id=done.pk, result={"rows": 3})
    failed = new_job(org=org, actor=owner)
    job_fail(job_id=failed.pk, code="ERR_TEST", message="It broke.")

    body = owner_client.get(f"/api/v1/jobs/{done.pk}").json()
    assert (body["status"], body["percent"], body["result"]) == ("succeeded", 100, {"rows": 3})
    body = owner_client.get(f"/api/v1/jobs/{failed.pk}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"code": "ERR_TEST", "message": "It broke."}


def test_outsider_gets_404_for_a_job_of_another_org(outsider_client, org, owner):
    job = new_job(org=org, actor=owner)

    error = assert_envelope(outsider_client.get(f"/api/v1/jobs/{job.pk}"), 404, "ERR_NOT_FOUND")
    assert str(job.pk) not in error["message"]


def test_unknown_job_is_404(owner_client):
    assert_envelope(owner_client.get(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "ERR_NOT_FOUND")


def test_anonymous_gets_401(anon_client, org, owner):
    job = new_job(org=org, actor=owner)

    assert_envelope(anon_client.get(f"/api/v1/jobs/{job.pk}"), 401, "ERR_UNAUTHENTICATED")


def test_platform_job_is_visible_only_to_its_actor(owner_client, member_client, outsider_client, owner):
    job = new_job(org=None, actor=owner)

    assert owner_client.get(f"/api/v1/jobs/{job.pk}").status_code == 200
    assert_envelope(member_client.get(f"/api/v1/jobs/{job.pk}"), 404, "ERR_NOT_FOUND")
    assert_envelope(outsider_client.get(f"/api/v1/jobs/{job.pk}"), 404, "ERR_NOT_FOUND")


def test_platform_job_without_actor_is_visible_to_nobody(owner_client, db):
    job = new_job(org=None, actor=None)

    assert_envelope(owner_client.get(f"/api/v1/jobs/{job.pk}"), 404, "ERR_NOT_FOUND")


def test_user_without_an_org_sees_only_their_platform_jobs(db, org, owner):
    loner = UserFactory()
    client = client_for(loner)
    mine = new_job(org=None, actor=loner)
    theirs = new_job(org=org, actor=owner)

    assert client.get(f"/api/v1/jobs/{mine.pk}").status_code == 200
    assert_envelope(client.get(f"/api/v1/jobs/{theirs.pk}"), 404, "ERR_NOT_FOUND")


# --- Services ----------------------------------------------------------------------------------


def test_job_create_records_a_pending_job(db, org, owner):
    job = new_job(org=org, actor=owner, payload={"x": 1})

    job = reload(job)
    assert (job.status, job.percent, job.attempts, job.payload) == ("pending", 0, 0, {"x": 1})


def test_job_create_refuses_an_unknown_kind(db, org):
    with pytest.raises(ValidationError) as caught:
        job_create(kind="no.such.kind", org=org)

    assert caught.value.code == "ERR_UNKNOWN_JOB_KIND"
    assert caught.value.status_code == 400
    assert not Job.objects.exists()


def test_job_start_is_won_only_once(db, org):
    job = new_job(org=org)

    first = job_start(job_id=job.pk)
    second = job_start(job_id=job.pk)

    assert first is not None
    assert (first.status, first.attempts) == ("running", 1)
    assert first.started_at is not None
    assert second is None
    assert reload(job).attempts == 1


def test_job_start_of_a_missing_job_returns_none(db):
    assert job_start(job_id=uuid.uuid4()) is None


@pytest.mark.parametrize(("reported", "stored"), [(150, 100), (-5, 0), (42, 42), (100, 100), (0, 0)])
def test_job_progress_clamps_percent_to_0_100(db, org, reported, stored):
    job = new_job(org=org)
    job_start(job_id=job.pk)

    assert job_progress(job_id=job.pk, percent=reported, message="working") is True

    job = reload(job)
    assert (job.percent, job.message) == (stored, "working")


def test_job_progress_truncates_long_messages(db, org):
    job = new_job(org=org)
    job_start(job_id=job.pk)

    job_progress(job_id=job.pk, percent=10, message="x" * 600)

    assert len(reload(job).message) == 500


def test_job_progress_is_refused_when_the_job_is_not_running(db, org):
    job = new_job(org=org)

    assert job_progress(job_id=job.pk, percent=50) is False
    assert reload(job).percent == 0


def test_job_create_is_one_insert_and_still_validates_its_fields(db, org, django_assert_num_queries):
    with django_assert_num_queries(1):  # no look-ups of the org, the new primary key or constraints
        job = new_job(org=org, message="queued")
    assert reload(job).message == "queued"

    with pytest.raises(Exception, match="at most 500"):
        new_job(org=org, message="x" * 501)
    assert Job.objects.count() == 1


def test_a_failed_job_create_leaves_the_callers_transaction_usable(db, org):
    with transaction.atomic():
        with pytest.raises(ValidationError):
            job_create(kind="no.such.kind", org=org)
        job = new_job(org=org)  # the surrounding transaction goes on
    assert Job.objects.filter(pk=job.pk).exists()


def test_jobs_succeed_gives_each_open_job_its_own_result_and_leaves_ended_ones(
    db, org, django_capture_on_commit_callbacks
):
    running, pending, ended = new_job(org=org), new_job(org=org), new_job(org=org)
    job_start(job_id=running.pk)
    job_fail(job_id=ended.pk, code="ERR_GONE", message="gone")

    with django_capture_on_commit_callbacks() as published:
        marked = jobs_succeed(
            results={running.pk: {"n": 1}, str(pending.pk): {"n": 2}, ended.pk: {"n": 3}}, message="Ready"
        )

    assert marked == 2
    assert [(j.status, j.percent, j.result, j.message) for j in map(reload, (running, pending))] == [
        ("succeeded", 100, {"n": 1}, "Ready"),
        ("succeeded", 100, {"n": 2}, "Ready"),
    ]
    assert (reload(ended).status, reload(ended).result) == ("failed", None)
    assert len(published) == 1  # the followers of both jobs, in one hop after commit
    assert jobs_succeed(results={}) == 0


def test_jobs_progress_moves_the_running_jobs_only(db, org):
    running, pending = new_job(org=org), new_job(org=org)
    job_start(job_id=running.pk)

    assert jobs_progress(job_ids=[running.pk, pending.pk], percent=140, message="Embedded 5/9 chunks") == 1

    assert (reload(running).percent, reload(running).message) == (100, "Embedded 5/9 chunks")
    assert (reload(pending).percent, reload(pending).status) == (0, "pending")


def test_succeeded_job_is_terminal(db, org):
    job = new_job(org=org)
    job_start(job_id=job.pk)
    assert job_succeed(job_id=job.pk, result={"n": 1}) is True

    assert job_progress(job_id=job.pk, percent=10) is False
    assert job_succeed(job_id=job.pk, result={"n": 2}) is False
    assert job_fail(job_id=job.pk, code="ERR_LATE", message="late") is False
    assert job_cancel(job_id=job.pk) is False
    assert job_start(job_id=job.pk) is None

    job = reload(job)
    assert (job.status, job.percent, job.result, job.error) == ("succeeded", 100, {"n": 1}, None)
    assert job.finished_at is not None


def test_failed_job_is_terminal(db, org):
    job = new_job(org=org)
    job_start(job_id=job.pk)
    job_progress(job_id=job.pk, percent=40)
    assert job_fail(job_id=job.pk, code="ERR_BROKEN", message="It broke.") is True

    assert job_progress(job_id=job.pk, percent=90) is False
    assert job_succeed(job_id=job.pk, result={"n": 1}) is False
    assert job_fail(job_id=job.pk, code="ERR_OTHER", message="again") is False

    job = reload(job)
    assert (job.status, job.percent, job.result) == ("failed", 40, None)
    assert job.error == {"code": "ERR_BROKEN", "message": "It broke."}
    assert job.message == "It broke."


def test_cancelled_job_is_never_started_and_stops_its_handler(db, org):
    pending = new_job(org=org)
    assert job_cancel(job_id=pending.pk) is True
    assert job_start(job_id=pending.pk) is None

    running = new_job(org=org)
    job_start(job_id=running.pk)
    assert job_cancel(job_id=running.pk) is True
    # The handler learns it at its next progress report.
    assert job_progress(job_id=running.pk, percent=50) is False
    assert reload(running).status == "cancelled"


def test_job_fail_stale_fails_running_jobs_that_stopped_reporting(db, org):
    stale_age = timedelta(seconds=settings.JOB_STALE_AFTER_SECONDS + 60)
    fresh_age = timedelta(seconds=max(settings.JOB_STALE_AFTER_SECONDS - 60, 0))
    stale, fresh, old_pending, old_done = (new_job(org=org) for _ in range(4))
    for job in (stale, fresh):
        job_start(job_id=job.pk)
    job_start(job_id=old_done.pk)
    job_succeed(job_id=old_done.pk)
    now = timezone.now()
    # Time travel: .update() bypasses auto_now.
    Job.objects.filter(pk__in=[stale.pk, old_pending.pk, old_done.pk]).update(updated_at=now - stale_age)
    Job.objects.filter(pk=fresh.pk).update(updated_at=now - fresh_age)

    assert job_fail_stale() == 1

    assert reload(stale).status == "failed"
    assert reload(stale).error["code"] == "ERR_JOB_STALE"
    assert reload(fresh).status == "running"
    assert reload(old_pending).status == "pending"
    assert reload(old_done).status == "succeeded"
    assert job_fail_stale() == 0


def test_run_job_redelivered_for_a_finished_job_changes_nothing(db, org):
    job = new_job(org=org)
    job_start(job_id=job.pk)
    job_succeed(job_id=job.pk, result={"first": True})
    before = reload(job)

    run_job(str(job.pk))  # what a redelivered message does, in this process

    after = reload(job)
    assert (after.status, after.result, after.attempts) == ("succeeded", {"first": True}, 1)
    assert after.updated_at == before.updated_at


def test_run_job_of_a_deleted_job_exits_quietly(db):
    run_job(str(uuid.uuid4()))


# --- run_job on a real Celery worker ----------------------------------------------------------


def test_tests_use_their_own_broker():
    """The worker below must never consume from the broker of a stack `make run` started."""
    broker = celery_app.conf.broker_url
    if settings.REDIS_URL:
        assert broker == settings.REDIS_URL
    else:
        assert broker.startswith("filesystem://")
        folder = Path(celery_app.conf.broker_transport_options["data_folder_in"])
        assert folder == Path(settings.VAR_DIR) / "test-broker" / "in"


@pytest.fixture
def celery_worker(transactional_db):
    """A Celery worker in a thread of this process, consuming the configured broker."""

    def close_worker_connections(**kwargs):
        # The task ran in the worker's thread: close its database connections there, so none is
        # left open when the test database is flushed or dropped.
        connections.close_all()

    task_postrun.connect(close_worker_connections, weak=False)
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=30) as worker:
            yield worker
    finally:
        task_postrun.disconnect(close_worker_connections)


def enqueue(**fields) -> Job:
    """Create a job the way callers do: in a transaction; the task is sent once it commits."""
    with transaction.atomic():
        job = job_create(**fields)
    return job


def wait_until_finished(job: Job, timeout: float = 30.0) -> Job:
    """Poll the database until the worker has finished the job (bounded)."""

    def finished() -> Job | None:
        current = reload(job)
        return current if current.is_finished else None

    done = wait_for(finished, timeout=timeout)
    if done is None:
        raise AssertionError(f"job {job.pk} still {reload(job).status} after {timeout}s")
    return done


@pytest.mark.django_db(transaction=True)
def test_worker_runs_a_job_to_success(celery_worker, org, owner):
    job = enqueue(kind="test.steps", org=org, actor=owner, payload={"steps": 3})

    job = wait_until_finished(job)

    assert job.status == "succeeded", job.error
    assert job.result == {"steps": 3}
    assert job.percent == 100
    assert job.attempts == 1
    assert job.error is None
    assert job.started_at is not None and job.finished_at is not None
    assert job.started_at <= job.finished_at


@pytest.mark.django_db(transaction=True)
def test_worker_fails_a_job_whose_handler_raises_an_application_error(celery_worker, org, owner):
    job = enqueue(kind="test.steps", org=org, actor=owner, payload={"steps": 3, "fail_at": 2})

    job = wait_until_finished(job)

    assert job.status == "failed"
    assert job.error == {"code": "ERR_TEST_STEP", "message": "Step failed."}
    assert job.percent == 25  # step 1 reported before step 2 failed
    assert job.result is None


@pytest.mark.django_db(transaction=True)
def test_worker_hides_the_details_of_a_crash(celery_worker, owner_client, org, owner):
    job = enqueue(kind="test.crash", org=org, actor=owner)

    job = wait_until_finished(job)

    assert job.status == "failed"
    assert job.error["code"] == "ERR_INTERNAL"
    assert "secret internal detail" not in json.dumps(job.error)
    assert "secret internal detail" not in job.message
    response = owner_client.get(f"/api/v1/jobs/{job.pk}")
    assert response.status_code == 200
    assert response.json()["error"]["code"] == "ERR_INTERNAL"
    assert b"secret internal detail" not in response.content


@pytest.mark.django_db(transaction=True)
def test_task_is_sent_only_once_the_transaction_commits(celery_worker, monkeypatch, org, owner):
    sent = []
    send = run_job.delay
    monkeypatch.setattr(run_job, "delay", lambda job_id: sent.append(job_id) or send(job_id))

    with pytest.raises(RuntimeError), transaction.atomic():
        job_create(kind="test.steps", org=org, actor=owner)
        raise RuntimeError("roll back")
    assert sent == []

    with transaction.atomic():
        job = job_create(kind="test.echo", org=org, actor=owner, payload={"k": 1})
        assert sent == []  # a worker taking it now would find no row
    assert sent == [str(job.pk)]

    job = wait_until_finished(job)
    assert (job.status, job.result) == ("succeeded", {"echo": {"k": 1}})
    assert Job.objects.count() == 1
