"""The API-key endpoints through a browser session: CRUD, validation, the role matrix, tenant
isolation (other orgs' and other people's keys answer 404) and the audit trail.

How keys behave when they are *used* (authentication, rotation windows, the request log) is in
``test_key_auth.py``.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import registries
from accounts.models import ApiKey, ApiKeyUsage, AuditLog, Role
from accounts.services.keys import api_key_create, api_key_revoke, api_key_usage_purge
from accounts.tasks import purge_api_key_usage
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/api-keys"


def detail(key) -> str:
    return f"{URL}/{key.pk if isinstance(key, ApiKey) else key}"


@pytest.fixture
def admin(org):
    return MembershipFactory(org=org, role=Role.ADMIN).user


@pytest.fixture
def viewer(org):
    return MembershipFactory(org=org, role=Role.VIEWER).user


@pytest.fixture
def admin_client(admin):
    return client_for(admin)


@pytest.fixture
def viewer_client(viewer):
    return client_for(viewer)


@pytest.fixture
def agent_id(org):
    """A fake agents app that knows one agent in `org` (restored afterwards)."""
    known = uuid.uuid4()
    previous = registries._agent_resolver
    registries.register_agent_resolver(lambda o, a: o.pk == org.pk and a == known)
    yield known
    registries.register_agent_resolver(previous)


def make_key(org, user, **kwargs) -> ApiKey:
    key, _raw = api_key_create(org=org, actor=user, name=kwargs.pop("name", "k"), **kwargs)
    return key


# --- create ------------------------------------------------------------------------------------


def test_member_creates_personal_key_and_sees_the_secret_once(member_client, member, org):
    response = member_client.post(URL, {"name": "laptop"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert {"id", "name", "kind", "prefix", "key", "role", "scopes", "agent", "autonomy"} <= set(body)
    assert {"expires_at", "created_at", "last_used_at", "user"} <= set(body)
    assert body["kind"] == "personal"
    assert body["user"] == str(member.pk)
    assert body["key"].startswith(body["prefix"] + "_")
    assert body["prefix"].startswith("pat_")
    assert body["role"] == "" and body["scopes"] == [] and body["agent"] is None
    key = ApiKey.objects.get(pk=body["id"])
    assert key.org == org and key.user == member

    listed = member_client.get(URL).json()["items"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert "key" not in listed[0]
    assert "key" not in member_client.get(detail(key)).json()
    for item in listed:
        assert not any("hash" in field for field in item)


def test_create_writes_an_audit_row_without_the_secret(member_client, org):
    body = member_client.post(URL, {"name": "ci", "scopes": ["keys:read"]}, format="json").json()
    row = AuditLog.objects.get(action="api_key.created", entity_id=body["id"])
    assert row.org == org
    assert row.after["scopes"] == ["keys:read"] and row.after["prefix"] == body["prefix"]
    secret = body["key"].rsplit("_", 1)[1]
    assert secret not in str(row.after)
    assert ApiKey.objects.get(pk=body["id"]).secret_hash not in str(row.after)


def test_admin_creates_service_key_with_its_own_role(admin_client, admin):
    response = admin_client.post(URL, {"name": "deploy", "kind": "service", "role": "ADMIN"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["prefix"].startswith("svc_") and body["role"] == "ADMIN"
    assert body["user"] == str(admin.pk)


def test_service_key_role_defaults_to_member(admin_client):
    body = admin_client.post(URL, {"name": "deploy", "kind": "service"}, format="json").json()
    assert body["role"] == "MEMBER"


def test_member_cannot_create_service_or_agent_keys(member_client, agent_id):
    for payload in ({"name": "s", "kind": "service"}, {"name": "a", "kind": "agent", "agent": str(agent_id)}):
        error = assert_envelope(member_client.post(URL, payload, format="json"), 403, "ERR_ROLE_REQUIRED")
        assert error["details"]["required_role"] == "ADMIN"
    assert not ApiKey.objects.exists()


def test_key_role_may_not_exceed_the_creators_role(admin_client, member_client):
    error = assert_envelope(
        admin_client.post(URL, {"name": "s", "kind": "service", "role": "OWNER"}, format="json"),
        403,
        "ERR_ROLE_REQUIRED",
    )
    assert error["details"] == {"required_role": "OWNER", "role": "ADMIN"}
    assert_envelope(
        member_client.post(URL, {"name": "p", "role": "ADMIN"}, format="json"), 403, "ERR_ROLE_REQUIRED"
    )
    assert not ApiKey.objects.exists()


def test_owner_may_create_an_owner_service_key(owner_client):
    body = owner_client.post(URL, {"name": "root", "kind": "service", "role": "OWNER"}, format="json").json()
    assert body["role"] == "OWNER"


def test_personal_key_role_is_a_ceiling(member_client):
    body = member_client.post(URL, {"name": "ro", "role": "VIEWER"}, format="json").json()
    assert body["role"] == "VIEWER"


def test_admin_creates_agent_key_bound_to_an_existing_agent(admin_client, agent_id):
    response = admin_client.post(
        URL, {"name": "bot", "kind": "agent", "agent": str(agent_id), "autonomy": "act"}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["prefix"].startswith("agt_")
    assert body["agent"] == str(agent_id) and body["autonomy"] == "act" and body["role"] == "MEMBER"


def test_agent_key_autonomy_defaults_to_suggest(admin_client, agent_id):
    body = admin_client.post(
        URL, {"name": "bot", "kind": "agent", "agent": str(agent_id)}, format="json"
    ).json()
    assert body["autonomy"] == "suggest"


def test_agent_key_needs_an_agent(admin_client, agent_id):
    error = assert_envelope(admin_client.post(URL, {"name": "bot", "kind": "agent"}, format="json"), 400)
    assert "agent" in error["details"]["fields"]


def test_agent_key_for_an_unknown_agent_is_refused(admin_client, agent_id):
    response = admin_client.post(
        URL, {"name": "bot", "kind": "agent", "agent": str(uuid.uuid4())}, format="json"
    )
    error = assert_envelope(response, 400, "ERR_AGENT_NOT_FOUND")
    assert "agent" in error["details"]["fields"]


def test_agent_key_is_refused_while_no_agents_app_answers(admin_client):
    response = admin_client.post(
        URL, {"name": "bot", "kind": "agent", "agent": str(uuid.uuid4())}, format="json"
    )
    assert_envelope(response, 400, "ERR_AGENT_NOT_FOUND")


def test_agent_of_another_org_is_not_found(admin_client, agent_id, other_org):
    outsider_admin = MembershipFactory(org=other_org, role=Role.ADMIN).user
    response = client_for(outsider_admin).post(
        URL, {"name": "bot", "kind": "agent", "agent": str(agent_id)}, format="json"
    )
    assert_envelope(response, 400, "ERR_AGENT_NOT_FOUND")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "k", "kind": "robot"}, "kind"),
        ({"name": "k", "role": "KING"}, "role"),
        ({"name": "k", "scopes": "keys:read"}, "scopes"),
        ({"name": "k", "expires_at": "not a date"}, "expires_at"),
        ({"name": "k", "autonomy": "act"}, "autonomy"),
        ({"name": "k", "agent": str(uuid.uuid4())}, "agent"),
        ({"name": "k", "autonomy": "reckless"}, "autonomy"),
    ],
)
def test_invalid_create_bodies_are_400_with_the_field_named(admin_client, payload, field):
    error = assert_envelope(admin_client.post(URL, payload, format="json"), 400)
    assert field in error["details"]["fields"], error
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("scope", ["widgets:read", "keys:admin", "keys", "KEYS:read", "", "keys:read:x"])
def test_unknown_scope_is_400_naming_it(member_client, scope):
    response = member_client.post(URL, {"name": "k", "scopes": ["keys:read", scope]}, format="json")
    error = assert_envelope(response, 400, "ERR_INVALID_SCOPE")
    assert error["details"]["invalid_scopes"] == [scope]
    assert repr(scope) in error["message"]
    assert not ApiKey.objects.exists()


def test_valid_scopes_are_stored_deduplicated(member_client):
    body = member_client.post(
        URL, {"name": "k", "scopes": ["keys:read", "agents:*", "keys:read", "boards:write"]}, format="json"
    ).json()
    assert body["scopes"] == ["keys:read", "agents:*", "boards:write"]
    body = member_client.post(URL, {"name": "k", "scopes": ["*", "keys:read"]}, format="json").json()
    assert body["scopes"] == ["*"]


def test_expires_at_must_be_in_the_future(member_client):
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    error = assert_envelope(member_client.post(URL, {"name": "k", "expires_at": past}, format="json"), 400)
    assert "expires_at" in error["details"]["fields"]
    future = (timezone.now() + timedelta(days=30)).isoformat()
    assert member_client.post(URL, {"name": "k", "expires_at": future}, format="json").status_code == 201


def test_malformed_json_is_400(member_client):
    response = member_client.post(URL, "{nope", content_type="application/json")
    assert_envelope(response, 400, "ERR_PARSE_ERROR")


# --- role matrix -------------------------------------------------------------------------------


def test_anonymous_is_401_everywhere(anon_client, org, member):
    key = make_key(org, member)
    for method, url in [
        ("get", URL),
        ("post", URL),
        ("get", detail(key)),
        ("patch", detail(key)),
        ("delete", detail(key)),
        ("post", detail(key) + "/revoke"),
        ("post", detail(key) + "/rotate"),
        ("post", detail(key) + "/roll"),
        ("get", detail(key) + "/usage"),
    ]:
        assert_envelope(getattr(anon_client, method)(url, {}, format="json"), 401, "ERR_UNAUTHENTICATED")


def test_viewer_may_not_use_the_key_endpoints(viewer_client, org, viewer):
    key = make_key(org, viewer)  # made while they were a MEMBER
    assert_envelope(viewer_client.get(URL), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(viewer_client.post(URL, {"name": "k"}, format="json"), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(viewer_client.post(detail(key) + "/rotate"), 403, "ERR_ROLE_REQUIRED")


@pytest.mark.parametrize(
    ("role", "kind", "expected"),
    [
        (Role.VIEWER, "personal", 403),
        (Role.MEMBER, "personal", 201),
        (Role.MEMBER, "service", 403),
        (Role.MEMBER, "agent", 403),
        (Role.ADMIN, "personal", 201),
        (Role.ADMIN, "service", 201),
        (Role.ADMIN, "agent", 201),
        (Role.OWNER, "service", 201),
        (Role.OWNER, "agent", 201),
    ],
)
def test_role_matrix_for_creating_keys(org, agent_id, role, kind, expected):
    user = MembershipFactory(org=org, role=role).user
    payload = {"name": "k", "kind": kind}
    if kind == "agent":
        payload["agent"] = str(agent_id)
    response = client_for(user).post(URL, payload, format="json")
    assert response.status_code == expected, response.content


def test_member_lists_only_their_own_keys(member_client, member, admin, org):
    mine = make_key(org, member)
    make_key(org, admin)
    items = member_client.get(URL).json()["items"]
    assert [item["id"] for item in items] == [str(mine.pk)]
    # ?user= cannot widen a MEMBER's view
    assert member_client.get(URL, {"user": str(admin.pk)}).json()["items"] == []


def test_admin_lists_every_key_of_the_org_with_filters(admin_client, member, admin, org, other_org, outsider):
    personal = make_key(org, member)
    service = make_key(org, admin, kind="service")
    make_key(other_org, outsider)
    body = admin_client.get(URL).json()
    assert body["total"] == 2
    assert {item["id"] for item in body["items"]} == {str(personal.pk), str(service.pk)}
    assert [i["id"] for i in admin_client.get(URL, {"kind": "service"}).json()["items"]] == [str(service.pk)]
    assert [i["id"] for i in admin_client.get(URL, {"user": str(member.pk)}).json()["items"]] == [
        str(personal.pk)
    ]


def test_list_filters_are_validated(admin_client):
    assert_envelope(admin_client.get(URL, {"kind": "robot"}), 400, "ERR_VALIDATION")
    assert_envelope(admin_client.get(URL, {"user": "nope"}), 400, "ERR_VALIDATION")


def test_list_query_count_does_not_grow_with_keys(admin_client, admin, org, django_assert_max_num_queries):
    for _ in range(5):
        make_key(org, admin)
    with django_assert_max_num_queries(8):
        assert admin_client.get(URL).json()["total"] == 5


def test_list_is_paginated(member_client, member, org):
    for n in range(3):
        make_key(org, member, name=f"k{n}")
    body = member_client.get(URL, {"limit": 2}).json()
    assert body["total"] == 3 and len(body["items"]) == 2 and body["limit"] == 2
    assert [item["name"] for item in body["items"]] == ["k2", "k1"]


# --- detail, isolation -------------------------------------------------------------------------


def test_other_members_key_is_404_to_a_member(member_client, org, admin):
    key = make_key(org, admin)
    for method, suffix in [
        ("get", ""),
        ("patch", ""),
        ("delete", ""),
        ("post", "/revoke"),
        ("get", "/usage"),
    ]:
        response = getattr(member_client, method)(detail(key) + suffix, {}, format="json")
        assert_envelope(response, 404, "ERR_NOT_FOUND")
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("get", ""),
        ("patch", ""),
        ("delete", ""),
        ("post", "/revoke"),
        ("post", "/rotate"),
        ("post", "/roll"),
        ("get", "/usage"),
    ],
)
def test_other_orgs_key_is_404_to_an_outsider(outsider_client, org, owner, method, suffix):
    key = make_key(org, owner)
    response = getattr(outsider_client, method)(detail(key) + suffix, {"name": "x"}, format="json")
    assert_envelope(response, 404, "ERR_NOT_FOUND")
    key.refresh_from_db()
    assert key.name == "k" and key.revoked_at is None and key.deleted_at is None


def test_unknown_key_is_404(member_client):
    assert_envelope(member_client.get(detail(uuid.uuid4())), 404, "ERR_NOT_FOUND")


def test_admin_sees_and_revokes_a_members_key(admin_client, org, member, admin):
    key = make_key(org, member)
    assert admin_client.get(detail(key)).json()["id"] == str(key.pk)
    body = admin_client.post(detail(key) + "/revoke").json()
    assert body["status"] == "revoked" and body["revoked_at"] and body["is_active"] is False
    row = AuditLog.objects.get(action="api_key.revoked", entity_id=str(key.pk))
    assert row.actor == admin and row.before["is_active"] is True and row.after["is_active"] is False


def test_revoke_is_idempotent(member_client, member, org):
    key = make_key(org, member)
    first = member_client.post(detail(key) + "/revoke").json()
    second = member_client.post(detail(key) + "/revoke").json()
    assert first["revoked_at"] == second["revoked_at"]
    assert AuditLog.objects.filter(action="api_key.revoked").count() == 1


def test_admin_may_not_rotate_someone_elses_personal_key(admin_client, org, member):
    key = make_key(org, member)
    assert_envelope(admin_client.post(detail(key) + "/rotate"), 403, "ERR_NOT_KEY_OWNER")
    assert_envelope(admin_client.post(detail(key) + "/roll"), 403, "ERR_NOT_KEY_OWNER")


def test_admin_may_not_rotate_a_key_stronger_than_themselves(admin_client, org, owner):
    key = make_key(org, owner, kind="service", role=Role.OWNER)
    error = assert_envelope(admin_client.post(detail(key) + "/rotate"), 403, "ERR_ROLE_REQUIRED")
    assert error["details"]["required_role"] == "OWNER"


def test_demoted_creator_keeps_sight_of_a_service_key_but_cannot_manage_it(org, admin):
    key = make_key(org, admin, kind="service")
    admin.memberships.filter(org=org).update(role=Role.MEMBER)
    client = client_for(admin)
    assert client.get(detail(key)).status_code == 200
    assert_envelope(client.patch(detail(key), {"name": "x"}, format="json"), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(client.post(detail(key) + "/roll"), 403, "ERR_ROLE_REQUIRED")
    assert client.post(detail(key) + "/revoke").status_code == 200  # taking power away is always fine


# --- update, delete ----------------------------------------------------------------------------


def test_patch_renames_rescopes_and_pauses_with_an_audit_diff(member_client, member, org):
    key = make_key(org, member, name="old")
    response = member_client.patch(
        detail(key), {"name": "new", "scopes": ["agents:read"], "is_active": False}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["name"] == "new" and body["scopes"] == ["agents:read"] and body["status"] == "inactive"
    row = AuditLog.objects.get(action="api_key.updated", entity_id=str(key.pk))
    assert row.before["name"] == "old" and row.after["name"] == "new"
    assert row.changes["scopes"] == [[], ["agents:read"]]
    assert row.changes["is_active"] == [True, False]


def test_patch_that_changes_nothing_writes_no_audit_row(member_client, member, org):
    key = make_key(org, member, name="same")
    assert member_client.patch(detail(key), {"name": "same"}, format="json").status_code == 200
    assert not AuditLog.objects.filter(action="api_key.updated").exists()


def test_patch_validates(member_client, member, org):
    key = make_key(org, member)
    assert_envelope(
        member_client.patch(detail(key), {"scopes": ["nope:read"]}, format="json"), 400, "ERR_INVALID_SCOPE"
    )
    error = assert_envelope(
        member_client.patch(detail(key), {"name": ""}, format="json"), 400, "ERR_VALIDATION"
    )
    assert "name" in error["details"]["fields"]
    assert_envelope(
        member_client.patch(detail(key), {"is_active": "maybe"}, format="json"), 400, "ERR_VALIDATION"
    )


def test_revoked_key_cannot_be_reactivated(member_client, member, org):
    key = make_key(org, member)
    api_key_revoke(key=key, actor=member)
    assert_envelope(
        member_client.patch(detail(key), {"is_active": True}, format="json"), 409, "ERR_KEY_REVOKED"
    )


def test_delete_is_soft_and_hides_the_key(member_client, member, org):
    key = make_key(org, member)
    assert member_client.delete(detail(key)).status_code == 204
    key.refresh_from_db()
    assert key.deleted_at is not None and key.is_active is False
    assert_envelope(member_client.get(detail(key)), 404, "ERR_NOT_FOUND")
    assert member_client.get(URL).json()["items"] == []
    assert AuditLog.objects.filter(action="api_key.deleted", entity_id=str(key.pk)).exists()


# --- rotate, roll ------------------------------------------------------------------------------


def test_rotate_returns_a_new_secret_with_a_grace_window(member_client, member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    before = timezone.now()
    body = member_client.post(detail(key) + "/rotate", {"grace_hours": 2}, format="json").json()
    assert body["key"] != raw and body["key"].startswith(body["prefix"] + "_")
    key.refresh_from_db()
    assert key.previous_secret_hash
    assert (
        before + timedelta(hours=2) <= key.previous_secret_expires_at <= timezone.now() + timedelta(hours=2)
    )
    assert AuditLog.objects.filter(action="api_key.rotated", entity_id=str(key.pk)).exists()


def test_rotate_defaults_to_24_hours(member_client, member, org):
    key = make_key(org, member)
    member_client.post(detail(key) + "/rotate")
    key.refresh_from_db()
    window = key.previous_secret_expires_at - timezone.now()
    assert timedelta(hours=23, minutes=59) < window <= timedelta(hours=24)


@pytest.mark.parametrize("grace", [-1, 169, "soon"])
def test_rotate_grace_hours_are_bounded(member_client, member, org, grace):
    key = make_key(org, member)
    error = assert_envelope(
        member_client.post(detail(key) + "/rotate", {"grace_hours": grace}, format="json"), 400
    )
    assert "grace_hours" in error["details"]["fields"]


def test_roll_kills_the_old_secret_now(member_client, member, org):
    key = make_key(org, member)
    body = member_client.post(detail(key) + "/roll").json()
    assert body["key"]
    key.refresh_from_db()
    assert key.previous_secret_hash == "" and key.previous_secret_expires_at is None
    assert AuditLog.objects.filter(action="api_key.rolled", entity_id=str(key.pk)).exists()


def test_rotating_or_rolling_a_revoked_key_is_409(member_client, member, org):
    key = make_key(org, member)
    api_key_revoke(key=key, actor=member)
    assert_envelope(member_client.post(detail(key) + "/rotate"), 409, "ERR_KEY_REVOKED")
    assert_envelope(member_client.post(detail(key) + "/roll"), 409, "ERR_KEY_REVOKED")


# --- usage log and its retention ---------------------------------------------------------------


def test_usage_of_a_key_without_requests_is_an_empty_page(member_client, member, org):
    key = make_key(org, member)
    assert member_client.get(detail(key) + "/usage").json() == {
        "items": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
    }


def test_purge_drops_only_usage_older_than_the_retention(settings, org, member):
    settings.API_KEY_USAGE_RETENTION_DAYS = 30
    key = make_key(org, member)
    now = timezone.now()
    old = ApiKeyUsage.objects.create(
        key=key, at=now - timedelta(days=31), method="GET", path="/a", status=200
    )
    fresh = ApiKeyUsage.objects.create(
        key=key, at=now - timedelta(days=29), method="GET", path="/b", status=200
    )
    assert purge_api_key_usage() == 1
    assert list(ApiKeyUsage.objects.values_list("pk", flat=True)) == [fresh.pk]
    assert not ApiKeyUsage.objects.filter(pk=old.pk).exists()
    assert purge_api_key_usage() == 0


def test_purge_works_in_batches(org, member):
    key = make_key(org, member)
    old = timezone.now() - timedelta(days=400)
    ApiKeyUsage.objects.bulk_create(
        ApiKeyUsage(key=key, at=old, method="GET", path="/", status=200) for _ in range(7)
    )
    assert api_key_usage_purge(older_than_days=1, batch_size=3) == 7
    assert not ApiKeyUsage.objects.exists()


# --- the service as other code calls it --------------------------------------------------------


def test_bootstrap_style_owner_service_key(org, owner):
    key, raw = api_key_create(org=org, actor=owner, name="bootstrap", kind="service", role=Role.OWNER)
    assert key.role == Role.OWNER and key.user == owner and raw.startswith("svc_")


def test_system_call_without_actor_skips_role_checks(org):
    key, _ = api_key_create(org=org, actor=None, name="ops", kind="service", role=Role.OWNER)
    assert key.user is None and key.role == Role.OWNER
    assert api_key_revoke(key=key, actor=None).revoked_at is not None
