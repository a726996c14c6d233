"""Security events: the OWNER-only list, and the receivers that record failed logins and denials."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import authenticate
from django.test import Client
from rest_framework.test import APIClient

from accounts import keys
from accounts.models import ApiKey, Role, SecurityEvent
from accounts.services.audit import security_event_record
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

EVENTS = "/api/v1/security-events"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def event(org, kind, *, user=None, identifier="someone@example.com", at=None, details=None):
    row = security_event_record(kind=kind, org=org, user=user, identifier=identifier, details=details)
    if at is not None:
        SecurityEvent.objects.filter(pk=row.pk).update(created_at=at)
        row.refresh_from_db()
    return row


def key_client(org, user, *, role=Role.ADMIN, scopes=None) -> tuple[APIClient, ApiKey]:
    public_id, secret = keys.new_public_id(), keys.new_secret()
    key = ApiKey.objects.create(
        org=org,
        user=user,
        kind=ApiKey.Kind.SERVICE,
        name="ci",
        public_id=public_id,
        secret_hash=keys.hash_secret(secret),
        role=role,
        scopes=scopes or [],
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {keys.format_key('service', public_id, secret)}")
    return client, key


@pytest.fixture
def events(org, owner, other_org):
    return {
        "login": event(org, SecurityEvent.Kind.LOGIN_FAILED, user=owner, identifier=owner.email, at=T0),
        "key": event(org, SecurityEvent.Kind.KEY_INVALID, identifier="abc", at=T0 + timedelta(days=1)),
        "denied": event(
            org,
            SecurityEvent.Kind.PERMISSION_DENIED,
            at=T0 + timedelta(days=2),
            details={"code": "ERR_ROLE_REQUIRED"},
        ),
        "foreign": event(other_org, SecurityEvent.Kind.LOGIN_FAILED, at=T0 + timedelta(days=3)),
    }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


# --- The list ----------------------------------------------------------------------------------------


def test_owner_sees_the_orgs_events_newest_first(owner_client, events):
    body = owner_client.get(EVENTS).json()
    assert [item["id"] for item in body["items"]] == [str(events[n].pk) for n in ("denied", "key", "login")]
    assert body["total"] == 3 and body["limit"] == 50 and body["offset"] == 0


def test_event_has_every_documented_field(owner_client, owner, events):
    item = owner_client.get(EVENTS, {"kind": "login_failed"}).json()["items"][0]
    assert set(item) == {
        "id",
        "created_at",
        "kind",
        "user",
        "api_key",
        "identifier",
        "ip",
        "user_agent",
        "path",
        "details",
        "request_id",
    }
    assert item["kind"] == "login_failed"
    assert item["user"] == {"id": str(owner.pk), "email": owner.email}
    assert item["identifier"] == owner.email
    assert item["api_key"] is None


@pytest.mark.parametrize("role", [Role.ADMIN, Role.MEMBER, Role.VIEWER])
def test_anyone_below_owner_is_refused(org, role, events):
    user = MembershipFactory(org=org, role=role).user
    error = assert_envelope(client_for(user).get(EVENTS), 403, "ERR_ROLE_REQUIRED")
    assert error["details"]["required_role"] == Role.OWNER


def test_anonymous_is_401(anon_client, events):
    assert_envelope(anon_client.get(EVENTS), 401)


def test_outsider_sees_only_their_own_orgs_events(outsider_client, org, events):
    assert ids(outsider_client.get(EVENTS)) == [str(events["foreign"].pk)]
    assert_envelope(outsider_client.get(EVENTS, HTTP_X_ORG_ID=str(org.pk)), 404)


def test_filter_by_kind(owner_client, events):
    assert ids(owner_client.get(EVENTS, {"kind": "key_invalid"})) == [str(events["key"].pk)]


def test_filter_by_time_range(owner_client, events):
    params = {"from": "2025-03-02T00:00:00Z", "to": "2025-03-03T00:00:00Z"}
    assert ids(owner_client.get(EVENTS, params)) == [str(events["key"].pk)]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"kind": "volcano"}, "kind"),
        ({"from": "soon"}, "from"),
        ({"to": "2025-02-30T00:00:00Z"}, "to"),
        ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, "to"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(owner_client, events, params, field):
    error = assert_envelope(owner_client.get(EVENTS, params), 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]


def test_list_runs_a_fixed_number_of_queries(owner_client, org, django_assert_max_num_queries):
    for n in range(20):
        event(org, SecurityEvent.Kind.LOGIN_FAILED, user=UserFactory(), identifier=f"u{n}@example.com")
    with django_assert_max_num_queries(8):
        assert len(owner_client.get(EVENTS).json()["items"]) == 20


# --- Failed logins -----------------------------------------------------------------------------------


def test_failed_login_records_the_user_and_their_only_org(org, owner):
    assert Client().login(email=owner.email, password="wrong") is False
    failed = SecurityEvent.objects.get(kind=SecurityEvent.Kind.LOGIN_FAILED)
    assert failed.identifier == owner.email
    assert failed.user == owner
    assert failed.org == org
    assert "password" not in str(failed.details)


def test_failed_login_for_an_unknown_email_names_nobody(db):
    assert authenticate(email="ghost@example.com", password="wrong") is None
    failed = SecurityEvent.objects.get(kind=SecurityEvent.Kind.LOGIN_FAILED)
    assert failed.identifier == "ghost@example.com"
    assert failed.user is None and failed.org is None


def test_failed_login_of_someone_in_two_orgs_has_no_org(org, other_org, member):
    MembershipFactory(org=other_org, user=member)
    authenticate(username=member.email.upper(), password="wrong")
    failed = SecurityEvent.objects.get(kind=SecurityEvent.Kind.LOGIN_FAILED)
    assert failed.user == member and failed.org is None


def test_successful_login_records_nothing(owner):
    assert Client().login(email=owner.email, password="pw-Secret-123") is True
    assert not SecurityEvent.objects.exists()


def test_failed_headless_login_is_recorded_with_the_request_details(owner):
    response = Client().post(
        "/_allauth/app/v1/auth/login",
        {"email": owner.email, "password": "wrong"},
        content_type="application/json",
        HTTP_USER_AGENT="pytest-agent",
    )
    assert response.status_code == 400
    failed = SecurityEvent.objects.get(kind=SecurityEvent.Kind.LOGIN_FAILED)
    assert failed.identifier == owner.email and failed.user == owner
    assert failed.path == "/_allauth/app/v1/auth/login"
    assert failed.user_agent == "pytest-agent"
    assert failed.ip == "127.0.0.1"


def test_the_owner_sees_failed_logins_of_their_people(owner_client, member):
    Client().login(email=member.email, password="wrong")
    items = owner_client.get(EVENTS).json()["items"]
    assert [(i["kind"], i["identifier"]) for i in items] == [("login_failed", member.email)]


# --- Permission denials ------------------------------------------------------------------------------


def test_role_denial_is_recorded(org):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    assert_envelope(client_for(viewer).get("/api/v1/activity"), 403, "ERR_ROLE_REQUIRED")
    denied = SecurityEvent.objects.get(kind=SecurityEvent.Kind.PERMISSION_DENIED)
    assert denied.org == org and denied.user == viewer
    assert denied.identifier == viewer.email
    assert denied.api_key is None
    assert denied.path == "/api/v1/activity"
    assert denied.details["code"] == "ERR_ROLE_REQUIRED"
    assert denied.details["method"] == "GET"
    assert denied.details["path"] == "/api/v1/activity"
    assert denied.details["required_role"] == Role.MEMBER
    assert denied.request_id


def test_scope_denial_names_the_key(org, owner):
    client, key = key_client(org, owner, scopes=["agents:read"])
    assert_envelope(client.get("/api/v1/activity"), 403, "ERR_SCOPE_REQUIRED")
    denied = SecurityEvent.objects.get(kind=SecurityEvent.Kind.PERMISSION_DENIED)
    assert denied.api_key == key and denied.identifier == key.public_id
    assert denied.org == org and denied.user == owner
    assert denied.details["required_scope"] == "activity:read"


def test_a_refused_key_is_recorded_once_not_as_a_denial(org, owner):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer pat_{keys.new_public_id()}_{keys.new_secret()}")
    assert_envelope(client.get("/api/v1/activity"), 401)
    assert list(SecurityEvent.objects.values_list("kind", flat=True)) == [SecurityEvent.Kind.KEY_INVALID]


def test_missing_organisation_is_not_a_denial(db):
    assert_envelope(client_for(UserFactory()).get("/api/v1/activity"), 403, "ERR_NO_ORGANISATION")
    assert not SecurityEvent.objects.exists()


def test_successful_calls_record_nothing(owner_client):
    assert owner_client.get("/api/v1/activity").status_code == 200
    assert not SecurityEvent.objects.exists()


def test_denials_show_up_in_the_owners_list(owner_client, org):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    client_for(viewer).get("/api/v1/security-events")
    items = owner_client.get(EVENTS).json()["items"]
    assert len(items) == 1
    assert items[0]["kind"] == "permission_denied"
    assert items[0]["user"] == {"id": str(viewer.pk), "email": viewer.email}
    assert items[0]["details"]["path"] == "/api/v1/security-events"
