"""Idempotency-Key on POST: a retry replays the first answer and runs nothing; a duplicate that
arrives while the first still runs is told to wait; failures are not remembered."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIRequestFactory

from core.middleware.idempotency import caller_fingerprint, request_fingerprint
from core.models import IdempotencyRecord, Job
from core.services import idempotency_records_purge
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope

ECHO = "/api/v1/_test/echo"


def post(client, body, key=None):
    extra = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(ECHO, body, format="json", **extra)


def runs() -> int:
    """How many times the echo view ran: it creates one Job row per execution."""
    return Job.objects.filter(kind="test.echo").count()


def in_progress_record(user, key: str, body: dict) -> IdempotencyRecord:
    """The record a request still running (or whose process died) leaves behind."""
    request = APIRequestFactory().post(ECHO, body, format="json")
    request.user = user
    return IdempotencyRecord.objects.create(
        caller=caller_fingerprint(request),
        key=key,
        fingerprint=request_fingerprint(request),
        method="POST",
        path=ECHO,
        expires_at=timezone.now() + timedelta(hours=24),
    )


def test_retry_replays_the_first_answer_without_running_again(owner_client):
    first = post(owner_client, {"name": "a"}, key="order-1")
    second = post(owner_client, {"name": "a"}, key="order-1")
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.json()["id"] == first.json()["id"]
    assert second["Content-Type"] == first["Content-Type"]
    assert second["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert runs() == 1


def test_same_key_with_another_body_is_422_and_runs_nothing(owner_client):
    assert post(owner_client, {"name": "a"}, key="order-2").status_code == 201
    response = post(owner_client, {"name": "b"}, key="order-2")
    error = assert_envelope(response, 422, "ERR_IDEMPOTENCY_MISMATCH")
    assert error["details"] == {"idempotency_key": "order-2"}
    assert runs() == 1


def test_same_key_from_another_caller_runs_separately(owner_client, member_client):
    mine = post(owner_client, {"name": "a"}, key="shared-key")
    theirs = post(member_client, {"name": "a"}, key="shared-key")
    assert mine.status_code == theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs
    assert mine.json()["id"] != theirs.json()["id"]
    assert runs() == 2


def test_without_a_key_every_request_runs(owner_client):
    first = post(owner_client, {"name": "a"})
    second = post(owner_client, {"name": "a"})
    assert first.json()["id"] != second.json()["id"]
    assert "Idempotent-Replayed" not in second
    assert runs() == 2
    assert not IdempotencyRecord.objects.exists()


def test_get_ignores_the_header(owner_client):
    for _ in range(2):
        # Even a key that would be invalid on POST is simply not looked at.
        response = owner_client.get("/api/v1/_test/jobs", HTTP_IDEMPOTENCY_KEY="k" * 300)
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response
    assert not IdempotencyRecord.objects.exists()


def test_server_error_is_not_stored_so_a_retry_runs_again(owner_client):
    first = post(owner_client, {"name": "explode"}, key="crash-1")
    assert_envelope(first, 500, "ERR_INTERNAL")
    assert not IdempotencyRecord.objects.exists()
    second = post(owner_client, {"name": "explode"}, key="crash-1")
    assert_envelope(second, 500, "ERR_INTERNAL")
    assert "Idempotent-Replayed" not in second


def test_validation_error_is_replayed(owner_client):
    first = post(owner_client, {"name": "x" * 11}, key="invalid-1")
    assert_envelope(first, 400, "ERR_VALIDATION")
    second = post(owner_client, {"name": "x" * 11}, key="invalid-1")
    assert_envelope(second, 400, "ERR_VALIDATION")
    assert second.content == first.content
    assert second["Idempotent-Replayed"] == "true"
    assert runs() == 0


@pytest.mark.parametrize("key", ["k" * 256, "tab\there"])
def test_invalid_key_is_400_and_runs_nothing(owner_client, key):
    response = post(owner_client, {"name": "a"}, key=key)
    assert_envelope(response, 400, "ERR_IDEMPOTENCY_KEY_INVALID")
    assert runs() == 0


def test_key_of_255_characters_is_accepted(owner_client):
    assert post(owner_client, {"name": "a"}, key="k" * 255).status_code == 201


def test_expired_record_lets_the_request_run_again(owner_client):
    first = post(owner_client, {"name": "a"}, key="old-1")
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    second = post(owner_client, {"name": "a"}, key="old-1")
    assert second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert second.json()["id"] != first.json()["id"]
    assert runs() == 2
    # The fresh answer is what later retries replay.
    third = post(owner_client, {"name": "a"}, key="old-1")
    assert third["Idempotent-Replayed"] == "true"
    assert third.json()["id"] == second.json()["id"]


def test_stale_in_progress_record_is_taken_over(owner, owner_client):
    record = in_progress_record(owner, "dead-1", {"name": "a"})
    IdempotencyRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - timedelta(minutes=6))
    response = post(owner_client, {"name": "a"}, key="dead-1")
    assert response.status_code == 201, response.content
    assert "Idempotent-Replayed" not in response
    assert runs() == 1
    record.refresh_from_db()
    assert record.state == IdempotencyRecord.State.DONE
    assert record.response_status == 201


def test_fresh_in_progress_record_is_409_with_retry_after(owner, owner_client):
    in_progress_record(owner, "busy-1", {"name": "a"})
    response = post(owner_client, {"name": "a"}, key="busy-1")
    error = assert_envelope(response, 409, "ERR_IDEMPOTENCY_IN_PROGRESS")
    assert error["details"] == {"idempotency_key": "busy-1"}
    assert int(response["Retry-After"]) >= 1
    assert runs() == 0


def test_purge_removes_only_expired_records(owner):
    now = timezone.now()
    expired = in_progress_record(owner, "gone-1", {"name": "a"})
    alive = in_progress_record(owner, "kept-1", {"name": "a"})
    IdempotencyRecord.objects.filter(pk=expired.pk).update(expires_at=now - timedelta(minutes=1))
    assert idempotency_records_purge() == 1
    assert list(IdempotencyRecord.objects.values_list("pk", flat=True)) == [alive.pk]


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_run_the_view_once(owner):
    count = 8
    clients = [client_for(owner) for _ in range(count)]
    barrier = threading.Barrier(count)
    answers: list = [None] * count
    failures: list[BaseException] = []

    def send(index: int) -> None:
        try:
            barrier.wait(timeout=10)
            answers[index] = post(clients[index], {"name": "slow"}, key="race-1")
        except BaseException as exc:  # surfaced by the assertion below, not lost in the thread
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert not failures, failures
    assert Job.objects.filter(kind="test.echo", actor=owner).count() == 1
    job_id = str(Job.objects.get(actor=owner).pk)
    created = [a for a in answers if a.status_code == 201]
    assert created, [a.status_code for a in answers]
    for answer in answers:
        if answer.status_code == 201:
            assert answer.json()["id"] == job_id
        else:
            assert_envelope(answer, 409, "ERR_IDEMPOTENCY_IN_PROGRESS")
            assert answer["Retry-After"]
