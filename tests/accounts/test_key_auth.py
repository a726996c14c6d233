"""API keys in use: the whole lifecycle over HTTP with the real key in ``Authorization: Bearer``.

Create → use → rotate (the old secret works inside the grace window, not after) → roll (the old
secret dies at once) → revoke; expiry; malformed keys; role changes and removal taking effect at
once; agent tokens; scopes; the cheap ``last_used_at``; the request log, in sync mode here and in
async mode through a real Daphne at the end. Time travel is done by updating timestamps.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import httpx
import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import auth_cache, authentication, registries
from accounts.middleware import UsageWriter
from accounts.models import ApiKey, ApiKeyUsage, Membership, Role, SecurityEvent
from accounts.services.keys import api_key_create
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory
from tests.polling import wait_for

pytestmark = pytest.mark.django_db

URL = "/api/v1/api-keys"
PING = "/api/v1/api-keys/ping"


def travel(queryset, **fields) -> None:
    """Time travel by rewriting timestamps; an UPDATE sends no signal, so drop cached lookups."""
    queryset.update(**fields)
    auth_cache.invalidate()


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def agent_token(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_AGENT_TOKEN=raw)
    return client


def works(raw: str) -> bool:
    """Whether the key is accepted (on an endpoint its MEMBER role may call)."""
    response = bearer(raw).get(URL)
    assert response.status_code in (200, 401), response.content
    return response.status_code == 200


@pytest.fixture
def admin(org):
    return MembershipFactory(org=org, role=Role.ADMIN).user


@pytest.fixture
def agent_id(org):
    known = uuid.uuid4()
    previous = registries._agent_resolver
    registries.register_agent_resolver(lambda o, a: o.pk == org.pk and a == known)
    yield known
    registries.register_agent_resolver(previous)


def test_full_lifecycle_create_use_rotate_roll_revoke(member_client, member, org):
    created = member_client.post(URL, {"name": "script"}, format="json").json()
    key_id, first = created["id"], created["key"]

    # use: the key authenticates as its user in its org
    listed = bearer(first).get(URL)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["items"]] == [key_id]
    assert bearer(first).get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404  # past auth

    # rotate: both secrets work inside the grace window
    rotated = bearer(first).post(f"{URL}/{key_id}/rotate", {"grace_hours": 1}, format="json")
    assert rotated.status_code == 200, rotated.content
    second = rotated.json()["key"]
    assert second != first
    assert works(first) and works(second)

    # ... and the old one dies when the window ends
    travel(ApiKey.objects.filter(pk=key_id), previous_secret_expires_at=timezone.now() - timedelta(seconds=1))
    assert_envelope(bearer(first).get(URL), 401, "ERR_AUTHENTICATION_FAILED")
    assert works(second)

    # roll: a new secret, the old one (and any grace secret) dead at once
    travel(ApiKey.objects.filter(pk=key_id), previous_secret_expires_at=timezone.now() + timedelta(hours=1))
    third = bearer(second).post(f"{URL}/{key_id}/roll").json()["key"]
    assert not works(second) and not works(first)
    assert works(third)

    # revoke: dead now, with its own error code
    assert bearer(third).post(f"{URL}/{key_id}/revoke").status_code == 200
    assert_envelope(bearer(third).get(URL), 401, "ERR_KEY_REVOKED")


def test_old_secret_after_a_zero_hour_rotation_is_dead(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    new = bearer(raw).post(f"{URL}/{key.pk}/rotate", {"grace_hours": 0}, format="json").json()["key"]
    assert not works(raw) and works(new)


def test_a_second_rotation_ends_the_first_grace_window(member, org):
    key, first = api_key_create(org=org, actor=member, name="k")
    second = bearer(first).post(f"{URL}/{key.pk}/rotate").json()["key"]
    third = bearer(second).post(f"{URL}/{key.pk}/rotate").json()["key"]
    assert not works(first) and works(second) and works(third)


def test_revoked_key_is_rejected_and_leaves_a_security_event(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    client_for(member).post(f"{URL}/{key.pk}/revoke")
    assert_envelope(bearer(raw).get(URL), 401, "ERR_KEY_REVOKED")
    event = SecurityEvent.objects.get(kind=SecurityEvent.Kind.KEY_REVOKED, api_key=key)
    assert event.org == org and event.identifier == key.public_id
    assert raw not in str(event.details) and raw.rsplit("_", 1)[1] not in event.identifier


def test_paused_key_is_rejected_until_resumed(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    session = client_for(member)
    session.patch(f"{URL}/{key.pk}", {"is_active": False}, format="json")
    assert_envelope(bearer(raw).get(URL), 401, "ERR_KEY_REVOKED")
    session.patch(f"{URL}/{key.pk}", {"is_active": True}, format="json")
    assert works(raw)


def test_deleted_key_is_rejected(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    assert bearer(raw).delete(f"{URL}/{key.pk}").status_code == 204
    assert_envelope(bearer(raw).get(URL), 401)


def test_expired_key_is_rejected(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k", expires_at=timezone.now() + timedelta(days=1))
    assert works(raw)
    travel(ApiKey.objects.filter(pk=key.pk), expires_at=timezone.now() - timedelta(seconds=1))
    assert_envelope(bearer(raw).get(URL), 401, "ERR_KEY_EXPIRED")
    assert SecurityEvent.objects.filter(kind=SecurityEvent.Kind.KEY_EXPIRED, api_key=key).exists()


@pytest.mark.parametrize(
    "raw",
    [
        "garbage",
        "pat_short_secret",
        "pat_" + "a" * 12 + "_" + "b" * 32,  # well formed, unknown id
        "xyz_" + "a" * 12 + "_" + "b" * 32,  # unknown kind prefix
        "pat_" + "a" * 12 + "_" + "b" * 31 + "!",
        "pat_" + "a" * 12 + "_" + "b" * 32 + "_extra",
    ],
)
def test_malformed_or_unknown_key_is_401(db, raw):
    assert_envelope(bearer(raw).get(URL), 401, "ERR_AUTHENTICATION_FAILED")
    assert_envelope(bearer(raw).get(PING), 401, "ERR_AUTHENTICATION_FAILED")


def test_right_id_wrong_secret_is_401(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    forged = raw[: -len("x")] + ("x" if raw[-1] != "x" else "y")
    assert_envelope(bearer(forged).get(URL), 401, "ERR_AUTHENTICATION_FAILED")
    assert SecurityEvent.objects.filter(kind=SecurityEvent.Kind.KEY_INVALID, api_key=key).exists()


def test_key_of_another_kind_prefix_is_401(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    assert_envelope(bearer("svc_" + raw.split("_", 1)[1]).get(URL), 401, "ERR_AUTHENTICATION_FAILED")


def test_personal_key_follows_its_users_demotion_at_once(org, admin):
    key, raw = api_key_create(org=org, actor=admin, name="k")
    created = bearer(raw).post(URL, {"name": "svc", "kind": "service"}, format="json")
    assert created.status_code == 201  # acting as ADMIN
    Membership.objects.filter(org=org, user=admin).update(role=Role.VIEWER)
    error = assert_envelope(bearer(raw).get(URL), 403, "ERR_ROLE_REQUIRED")
    assert error["details"]["role"] == "VIEWER"


def test_personal_key_ceiling_caps_its_user(org, admin):
    _key, raw = api_key_create(org=org, actor=admin, name="k", role=Role.MEMBER)
    response = bearer(raw).post(URL, {"name": "svc", "kind": "service"}, format="json")
    assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_removed_members_key_is_401(member, org):
    _key, raw = api_key_create(org=org, actor=member, name="k")
    assert works(raw)
    Membership.objects.filter(org=org, user=member).delete()
    assert_envelope(bearer(raw).get(URL), 401, "ERR_KEY_REVOKED")


def test_service_key_acts_with_its_own_role(org, admin):
    key, raw = api_key_create(org=org, actor=admin, name="s", kind="service", role=Role.ADMIN)
    other = MembershipFactory(org=org, role=Role.MEMBER).user
    api_key_create(org=org, actor=other, name="theirs")
    items = bearer(raw).get(URL).json()["items"]
    assert len(items) == 2  # ADMIN sees every key of the org


def test_x_agent_token_accepts_only_agent_keys(org, admin, agent_id):
    _agent_key, agent_raw = api_key_create(org=org, actor=admin, name="bot", kind="agent", agent_id=agent_id)
    _personal, personal_raw = api_key_create(org=org, actor=admin, name="me")
    body = agent_token(agent_raw).get(PING).json()
    assert body == {"authenticated": True, "key": agent_raw.rsplit("_", 1)[0]}
    assert agent_token(agent_raw).get(URL).status_code == 200
    assert_envelope(agent_token(personal_raw).get(URL), 401, "ERR_AUTHENTICATION_FAILED")
    assert_envelope(agent_token("garbage").get(URL), 401)


def test_agent_key_works_as_bearer_too(org, admin, agent_id):
    _key, raw = api_key_create(org=org, actor=admin, name="bot", kind="agent", agent_id=agent_id)
    assert works(raw)


def test_scopes_are_enforced(member, org):
    _key, raw = api_key_create(org=org, actor=member, name="ro", scopes=["keys:read"])
    assert bearer(raw).get(URL).status_code == 200
    error = assert_envelope(bearer(raw).post(URL, {"name": "x"}, format="json"), 403, "ERR_SCOPE_REQUIRED")
    assert error["details"]["required_scope"] == "keys:write"
    _other, unrelated = api_key_create(org=org, actor=member, name="agents", scopes=["agents:*"])
    assert_envelope(bearer(unrelated).get(URL), 403, "ERR_SCOPE_REQUIRED")


def test_a_key_cannot_mint_a_stronger_key(org, owner):
    _key, raw = api_key_create(org=org, actor=owner, name="k", role=Role.MEMBER, scopes=["keys:write"])
    client = bearer(raw)
    assert_envelope(
        client.post(URL, {"name": "s", "kind": "service"}, format="json"), 403, "ERR_ROLE_REQUIRED"
    )
    error = assert_envelope(
        client.post(URL, {"name": "p", "scopes": ["*"]}, format="json"), 403, "ERR_SCOPE_REQUIRED"
    )
    assert error["details"]["scopes"] == ["*"]
    child = client.post(URL, {"name": "child"}, format="json").json()
    # the child inherits the parent's ceiling and scopes instead of "everything the owner can do"
    assert child["role"] == "MEMBER" and child["scopes"] == ["keys:write"]


def test_a_scoped_key_cannot_take_over_a_broader_key(org, member):
    broad, _ = api_key_create(org=org, actor=member, name="all")
    _narrow, raw = api_key_create(org=org, actor=member, name="keys", scopes=["keys:*"])
    assert_envelope(bearer(raw).post(f"{URL}/{broad.pk}/roll"), 403, "ERR_SCOPE_REQUIRED")
    assert bearer(raw).post(f"{URL}/{broad.pk}/revoke").status_code == 200


def test_x_org_id_of_another_org_is_404(member, org, other_org):
    _key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    assert_envelope(client.get(URL, HTTP_X_ORG_ID=str(other_org.pk)), 404)
    assert client.get(URL, HTTP_X_ORG_ID=str(org.pk)).status_code == 200


def test_key_sees_only_its_own_org(member, org, other_org, outsider):
    theirs, _ = api_key_create(org=other_org, actor=outsider, name="theirs")
    _key, raw = api_key_create(org=org, actor=member, name="k")
    assert_envelope(bearer(raw).get(f"{URL}/{theirs.pk}"), 404, "ERR_NOT_FOUND")


def test_last_used_at_is_written_at_most_once_a_minute(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)

    def key_updates(queries) -> list[str]:
        return [q["sql"] for q in queries if q["sql"].startswith('UPDATE "accounts_apikey"')]

    with CaptureQueriesContext(connection) as first:
        assert client.get(PING).status_code == 200
    assert len(key_updates(first.captured_queries)) == 1
    key.refresh_from_db()
    stamped = key.last_used_at
    assert stamped is not None and key.last_used_ip == "127.0.0.1"

    with CaptureQueriesContext(connection) as second:
        assert client.get(PING).status_code == 200
    assert key_updates(second.captured_queries) == []
    key.refresh_from_db()
    assert key.last_used_at == stamped

    cache.delete(f"auth:last-used:{key.pk}")  # the minute has passed…
    authentication._last_used_asked.clear()  # …for this process's memo too
    with CaptureQueriesContext(connection) as later:
        client.get(PING)
    assert len(key_updates(later.captured_queries)) == 1


def test_a_process_asks_the_cache_about_last_used_once_a_minute_per_key(member, org, monkeypatch):
    key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    asked = []
    real_add = cache.add

    def counting_add(name, *args, **kwargs):
        if name.startswith("auth:last-used:"):
            asked.append(name)
        return real_add(name, *args, **kwargs)

    monkeypatch.setattr(authentication.cache, "add", counting_add)
    for _ in range(3):
        assert client.get(PING).status_code == 200
    assert asked == [f"auth:last-used:{key.pk}"]
    clock = time.monotonic() + authentication.LAST_USED_RESOLUTION.total_seconds() + 1
    monkeypatch.setattr(authentication.time, "monotonic", lambda: clock)
    assert client.get(PING).status_code == 200
    assert len(asked) == 2


def _reads_and_writes(queries):
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SELECT")]
    return reads, writes


def test_key_lookup_is_one_query_then_a_cache_hit(member, org):
    _key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    with CaptureQueriesContext(connection) as first:
        assert client.get(PING).status_code == 200
    reads, _writes = _reads_and_writes(first)
    assert len(reads) == 1, reads
    with CaptureQueriesContext(connection) as second:
        assert client.get(PING).status_code == 200
    reads, writes = _reads_and_writes(second)
    assert reads == []
    assert len(writes) == 1 and writes[0].startswith('INSERT INTO "accounts_apikeyusage"'), writes


def test_without_the_cache_the_lookup_is_one_query_every_time(member, org, settings):
    settings.AUTH_CACHE_SECONDS = 0
    _key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    client.get(PING)  # stamps last_used_at
    with CaptureQueriesContext(connection) as queries:
        assert client.get(PING).status_code == 200
    reads, writes = _reads_and_writes(queries)
    assert len(reads) == 1, reads
    assert len(writes) == 1 and writes[0].startswith('INSERT INTO "accounts_apikeyusage"'), writes


@pytest.mark.parametrize(
    "change",
    [
        "revoke",
        "deactivate_user",
        "remove_member",
        "demote_to_viewer",
        "delete_org",
        "soft_delete_key",
    ],
)
def test_a_cached_key_feels_every_change_on_the_next_request(change, member, owner, org):
    """The lookup cache never serves a key past a change that affects it."""
    from accounts.services.keys import api_key_revoke
    from accounts.services.orgs import member_remove, member_update_role, org_delete_request

    key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    assert client.get(URL).status_code == 200
    assert client.get(URL).status_code == 200  # now served from the cache
    if change == "revoke":
        api_key_revoke(key=key, actor=member)
    elif change == "deactivate_user":
        member.is_active = False
        member.save()
    elif change == "remove_member":
        member_remove(org=org, actor=owner, actor_role=Role.OWNER, user_id=member.pk)
    elif change == "demote_to_viewer":
        member_update_role(org=org, actor=owner, actor_role=Role.OWNER, user_id=member.pk, role=Role.VIEWER)
    elif change == "delete_org":
        org_delete_request(org=org, actor=owner)
    elif change == "soft_delete_key":
        key.deleted_at = timezone.now()
        key.save()
    answer = client.get(URL)
    if change == "demote_to_viewer":
        assert answer.status_code == 403  # VIEWER may not list keys
    else:
        assert answer.status_code == 401, answer.content


def test_secret_is_stored_only_as_a_hash(member_client):
    body = member_client.post(URL, {"name": "k"}, format="json").json()
    raw = body["key"]
    secret = raw.rsplit("_", 1)[1]
    key = ApiKey.objects.get(pk=body["id"])
    for field in key._meta.concrete_fields:
        value = str(field.value_from_object(key))
        assert secret not in value, field.name
        assert raw not in value, field.name
    assert len(key.secret_hash) == 64 and key.secret_hash != secret


def test_usage_endpoint_lists_requests_newest_first(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    client = bearer(raw)
    client.get(PING, HTTP_X_REQUEST_ID="req-ping-00001")
    client.get(f"{URL}/{uuid.uuid4()}")
    client.post(URL, {}, format="json")
    client_for(member).get(URL)  # a session request is not in any key's log

    body = client.get(f"{URL}/{key.pk}/usage").json()
    assert body["total"] == 3  # the usage request itself is logged after it answers
    rows = body["items"]
    assert [(r["method"], r["path"], r["status"]) for r in rows] == [
        ("POST", URL, 400),
        ("GET", f"{URL}/{rows[1]['path'].rsplit('/', 1)[1]}", 404),
        ("GET", PING, 200),
    ]
    assert rows[2]["request_id"] == "req-ping-00001"
    assert rows[0]["ip"] == "127.0.0.1" and rows[0]["duration_ms"] >= 0 and rows[0]["at"]
    assert ApiKeyUsage.objects.filter(key=key).count() == 4


def test_failed_key_requests_leave_no_usage_rows(member, org):
    key, raw = api_key_create(org=org, actor=member, name="k")
    client_for(member).post(f"{URL}/{key.pk}/revoke")
    bearer(raw).get(URL)
    assert not ApiKeyUsage.objects.exists()


def test_ping_without_credentials(anon_client, member_client):
    assert anon_client.get(PING).json() == {"authenticated": False, "key": None}
    assert member_client.get(PING).json() == {"authenticated": True, "key": None}


# --- async mode: the batched writer, and a real Daphne -------------------------------------------


def _usage_row(key, **overrides):
    row = {
        "at": timezone.now(),
        "key_id": key.pk,
        "method": "GET",
        "path": PING,
        "status": 200,
        "duration_ms": 1.234,
        "ip": "10.0.0.1",
        "request_id": "r-1",
    }
    return {**row, **overrides}


def test_usage_writer_batches_rows_and_skips_deleted_keys(member, org):
    key, _ = api_key_create(org=org, actor=member, name="k")
    writer = UsageWriter(autostart=False)
    writer.add(_usage_row(key, status=200))
    writer.add(_usage_row(key, status=404, path=URL))
    writer.add(_usage_row(key, key_id=uuid.uuid4()))  # a key hard-deleted with its org meanwhile
    assert writer.pending() == 3 and not ApiKeyUsage.objects.exists()
    with CaptureQueriesContext(connection) as queries:
        assert writer.flush() == 2
    inserts = [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert len(inserts) == 1  # one statement for the whole batch
    assert sorted(ApiKeyUsage.objects.values_list("status", flat=True)) == [200, 404]
    assert ApiKeyUsage.objects.filter(ip="10.0.0.1", request_id="r-1", duration_ms=1.23).count() == 2
    assert writer.pending() == 0 and writer.flush() == 0


def test_usage_writer_is_bounded(member, org):
    key, _ = api_key_create(org=org, actor=member, name="k")
    writer = UsageWriter(autostart=False, max_pending=2)
    for _ in range(5):
        writer.add(_usage_row(key))
    assert writer.pending() == 2 and writer.dropped == 3


def _wait_for_usage(key, count: int, timeout: float = 10.0) -> None:
    """Wait for the server's writer thread (another process) to flush; bounded, not a timing check."""
    wait_for(
        lambda: ApiKeyUsage.objects.filter(key=key).count() >= count,
        timeout=timeout,
        what=f"{count} usage rows",
    )


@pytest.mark.django_db(transaction=True)
def test_usage_is_recorded_under_daphne(tmp_path, org, member):
    from tests.support.asgi_server import run_asgi_server

    key, raw = api_key_create(org=org, actor=member, name="k")
    with run_asgi_server(log_dir=tmp_path) as server:
        headers = {"Authorization": f"Bearer {raw}"}
        with httpx.Client(base_url=server.base_url, headers=headers, timeout=10) as http:
            assert http.get(PING).json() == {"authenticated": True, "key": raw.rsplit("_", 1)[0]}
            assert http.get(URL).status_code == 200
            _wait_for_usage(key, 2)
            usage = http.get(f"{URL}/{key.pk}/usage").json()
            anonymous = httpx.get(server.base_url + PING, timeout=10).json()
            _wait_for_usage(key, 3)  # the usage request itself
        log = server.log()
    assert usage["total"] == 2, log
    assert [(row["path"], row["status"]) for row in usage["items"]] == [(URL, 200), (PING, 200)]
    assert usage["items"][0]["ip"] == "127.0.0.1" and usage["items"][0]["request_id"]
    assert anonymous == {"authenticated": False, "key": None}
    assert ApiKeyUsage.objects.filter(key=key).count() == 3
