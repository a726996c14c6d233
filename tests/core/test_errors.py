"""Every non-2xx answer under the API prefixes is the error envelope, with the right status."""

import logging
import uuid

import pytest
from rest_framework.test import APIClient


def assert_envelope(response, status, code=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"].startswith("ERR_")
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    if code:
        assert body["error"]["code"] == code
    return body["error"]


def test_validation_error_lists_field_errors(owner_client):
    response = owner_client.post("/api/v1/_test/echo", {"name": "x" * 11, "count": -1}, format="json")
    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert set(error["details"]["fields"]) == {"name", "count"}
    assert "name" in error["message"]


def test_missing_field_is_a_validation_error(owner_client):
    error = assert_envelope(owner_client.post("/api/v1/_test/echo", {}, format="json"), 400, "ERR_VALIDATION")
    assert error["details"]["fields"]["name"] == ["This field is required."]


def test_malformed_json_is_a_parse_error(owner_client):
    response = owner_client.post("/api/v1/_test/echo", "{not json", content_type="application/json")
    assert_envelope(response, 400, "ERR_PARSE_ERROR")


def test_unauthenticated_is_401_with_challenge(anon_client):
    response = anon_client.get(f"/api/v1/jobs/{uuid.uuid4()}")
    assert_envelope(response, 401, "ERR_UNAUTHENTICATED")
    assert response["WWW-Authenticate"]


def test_permission_denied_is_403(owner_client):
    assert_envelope(owner_client.get("/api/v1/_test/forbidden"), 403, "ERR_PERMISSION_DENIED")


def test_missing_row_is_404_not_found(owner_client):
    error = assert_envelope(owner_client.get("/api/v1/_test/missing"), 404, "ERR_NOT_FOUND")
    assert error["message"] == "Widget not found."


@pytest.mark.parametrize("path", ["/api/v1/no-such-route", "/mcp/nothing", "/api/x"])
def test_unknown_route_is_404_envelope(anon_client, path):
    assert_envelope(anon_client.get(path), 404, "ERR_ROUTE_NOT_FOUND")


def test_unknown_page_outside_api_stays_html(anon_client, db):
    response = anon_client.get("/no-such-page")
    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_wrong_method_is_405_with_allow(owner_client):
    response = owner_client.delete(f"/api/v1/jobs/{uuid.uuid4()}")
    assert_envelope(response, 405, "ERR_METHOD_NOT_ALLOWED")
    assert "GET" in response["Allow"]


def test_wrong_method_on_plain_django_view_is_405_envelope(owner_client):
    response = owner_client.get("/api/v1/_test/plain")
    assert_envelope(response, 405, "ERR_METHOD_NOT_ALLOWED")
    assert response["Allow"] == "POST"


def test_unsupported_media_type_is_415(owner_client):
    response = owner_client.post("/api/v1/_test/echo", "name=x", content_type="text/plain")
    assert_envelope(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")


def test_application_error_keeps_its_code(owner_client):
    error = assert_envelope(owner_client.post("/api/v1/_test/conflict", {}, format="json"), 409)
    assert error["code"] == "ERR_ALREADY_DONE"


def test_500_hides_the_traceback_and_names_the_request(owner_client, caplog):
    with caplog.at_level(logging.ERROR):
        response = owner_client.get("/api/v1/_test/boom", HTTP_X_REQUEST_ID="trace-me-12345")
    error = assert_envelope(response, 500, "ERR_INTERNAL")
    assert b"secret internal detail" not in response.content
    assert b"Traceback" not in response.content
    assert error["details"]["request_id"] == "trace-me-12345" == response["X-Request-Id"]
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged and logged[0].request_id == "trace-me-12345"
    assert logged[0].exc_info is not None


def test_csrf_is_enforced_for_session_writes(owner):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post("/api/v1/_test/echo", {"name": "a"}, format="json")
    error = assert_envelope(response, 403, "ERR_CSRF_FAILED")
    assert "CSRF" in error["message"]


def test_csrf_token_lets_session_writes_through(owner):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(owner)
    token = "k" * 32  # any well-formed secret: the cookie and the header must agree
    client.cookies["csrftoken"] = token
    response = client.post("/api/v1/_test/echo", {"name": "a"}, format="json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content


class TestRequestId:
    def test_generated_when_absent(self, anon_client, db):
        response = anon_client.get("/health")
        assert len(response["X-Request-Id"]) == 32

    def test_sane_client_id_is_echoed(self, anon_client, db):
        response = anon_client.get("/version", HTTP_X_REQUEST_ID="client-abc-123")
        assert response["X-Request-Id"] == "client-abc-123"

    @pytest.mark.parametrize("bad", ["short", "has spaces in it", "x" * 300, "semi;colon;value"])
    def test_insane_client_id_is_replaced(self, anon_client, db, bad):
        response = anon_client.get("/version", HTTP_X_REQUEST_ID=bad)
        assert response["X-Request-Id"] != bad
        assert len(response["X-Request-Id"]) == 32

    def test_present_on_errors(self, anon_client):
        response = anon_client.get("/api/v1/nothing-here")
        assert response.status_code == 404
        assert response["X-Request-Id"]
