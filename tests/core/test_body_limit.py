"""Bodies over the limit answer 413 before any view reads them; upload views declare their own."""

from __future__ import annotations

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from core.models import IdempotencyRecord, Job
from tests.core.test_errors import assert_envelope

ECHO = "/api/v1/_test/echo"
UPLOAD = "/api/v1/_test/upload"
MB = 1024 * 1024


def json_body(size: int) -> str:
    """An echo body of exactly ``size`` bytes (its name far over the serializer's 10 characters)."""
    body = json.dumps({"name": ""})
    return json.dumps({"name": "x" * (size - len(body))})


def test_json_body_just_over_the_limit_is_413_and_runs_nothing(owner_client):
    body = json_body(MB + 1)
    assert len(body) == MB + 1
    response = owner_client.post(ECHO, body, content_type="application/json", HTTP_IDEMPOTENCY_KEY="big-1")
    error = assert_envelope(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert error["details"] == {"limit_bytes": MB, "received_bytes": MB + 1}
    assert not Job.objects.exists()
    assert not IdempotencyRecord.objects.exists()


def test_json_body_at_the_limit_reaches_the_view(owner_client):
    response = owner_client.post(ECHO, json_body(MB), content_type="application/json")
    # Past the size check, the serializer rejects the 1 MB name.
    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert "name" in error["details"]["fields"]


def test_upload_view_accepts_a_file_over_the_default_limit(owner_client):
    upload = SimpleUploadedFile("two.bin", b"\0" * (2 * MB))
    response = owner_client.post(UPLOAD, {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json() == {"size": 2 * MB}


def test_upload_view_rejects_a_file_over_its_own_limit(owner_client):
    upload = SimpleUploadedFile("six.bin", b"\0" * (6 * MB))
    response = owner_client.post(UPLOAD, {"file": upload}, format="multipart")
    error = assert_envelope(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert error["details"]["limit_bytes"] == 5 * MB
    assert error["details"]["received_bytes"] > 6 * MB


def test_unknown_route_with_a_big_body_answers_the_envelope(anon_client, db):
    response = anon_client.post("/api/v1/no-such-route", json_body(2 * MB), content_type="application/json")
    assert response.status_code in (404, 413)
    assert_envelope(response, response.status_code)


def test_overridden_limit_is_honoured(owner_client, settings):
    settings.MAX_REQUEST_BODY_BYTES = 100
    response = owner_client.post(ECHO, json_body(101), content_type="application/json")
    error = assert_envelope(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert error["details"] == {"limit_bytes": 100, "received_bytes": 101}
    assert owner_client.post(ECHO, {"name": "small"}, format="json").status_code == 201
    assert Job.objects.count() == 1


def test_declared_limit_still_applies_when_the_default_is_lowered(owner_client, settings):
    settings.MAX_REQUEST_BODY_BYTES = 100
    upload = SimpleUploadedFile("one.bin", b"\0" * MB)
    assert owner_client.post(UPLOAD, {"file": upload}, format="multipart").status_code == 201
