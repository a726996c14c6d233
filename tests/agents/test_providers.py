"""LLM providers: VIEWERs read, ADMINs write; keys are write-only, stored encrypted and only ever
shown masked (never in an answer or an audit row); base URLs pass the outbound guard; names are
unique per org; other orgs' providers answer 404; models and verify talk to the fake upstream."""

from __future__ import annotations

import json
import uuid

import pytest

from accounts.models import AuditLog, Role
from agents.models import Provider
from tests.accounts.factories_orgs import ROLES, client_with_role, service_key
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db

PROVIDERS = "/api/v1/providers"
RAW_KEY = "sk-live-abcdefghijklmnopqrstuvwxyz0123456789WXYZ"
PUBLIC_BASE = "https://93.184.216.34/v1"  # an IP literal: checked without DNS, never contacted


def url(provider, suffix=""):
    return f"{PROVIDERS}/{provider.pk if hasattr(provider, 'pk') else provider}{suffix}"


def make_provider(org, *, name=None, api_key=RAW_KEY, api_base=PUBLIC_BASE, **fields):
    """A provider row made directly (the API is what the tests exercise)."""
    return Provider.objects.create(
        org=org, name=name or f"prov-{uuid.uuid4().hex[:8]}", api_key=api_key, api_base=api_base, **fields
    )


def audit_text(org) -> str:
    """Every audit row of ``org`` as one string, to look for leaked secrets."""
    rows = AuditLog.objects.filter(org=org).values("before", "after", "changes", "entity_id", "action")
    return json.dumps(list(rows), default=str)


@pytest.fixture
def admin_client(org):
    return client_with_role(org, Role.ADMIN)[1]


@pytest.fixture
def viewer_client(org):
    return client_with_role(org, Role.VIEWER)[1]


def create_body(**overrides):
    body = {"name": "Main", "provider_type": "openai_compat", "api_base": PUBLIC_BASE, "api_key": RAW_KEY}
    body.update(overrides)
    return body


# --- create -------------------------------------------------------------------------------------------


def test_admin_creates_a_provider_and_sees_only_the_masked_key(admin_client, org):
    response = admin_client.post(PROVIDERS, create_body(priority=5, extra_headers={"X-Team": "blue"}))
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "Main"
    assert body["provider_type"] == "openai_compat"
    assert body["api_base"] == PUBLIC_BASE
    assert body["api_key_masked"] == "sk-…WXYZ"
    assert body["has_api_key"] is True
    assert body["extra_header_names"] == ["X-Team"]
    assert body["enabled"] is True and body["priority"] == 5
    assert body["is_verified"] is False and body["verified_at"] is None and body["last_error"] == ""
    assert "api_key" not in body
    assert RAW_KEY not in response.content.decode()
    assert "blue" not in response.content.decode()  # header values may be secrets too
    provider = Provider.objects.get(pk=body["id"])
    assert provider.org == org and provider.api_key == RAW_KEY


def test_create_defaults_type_enabled_and_priority(admin_client):
    body = admin_client.post(PROVIDERS, {"name": "Bare", "api_key": RAW_KEY}).json()
    assert body["provider_type"] == "openai_compat"
    assert body["api_base"] == ""
    assert body["enabled"] is True and body["priority"] == 100


def test_create_is_audited_with_the_masked_key_only(admin_client, org, owner):
    provider_id = admin_client.post(PROVIDERS, create_body(extra_headers={"X-Secret": "hush-hush"})).json()[
        "id"
    ]
    row = AuditLog.objects.get(org=org, action="provider.created")
    assert row.entity_type == "provider" and row.entity_id == provider_id
    assert row.after["api_key_masked"] == "sk-…WXYZ"
    assert row.after["extra_header_names"] == ["X-Secret"]
    assert RAW_KEY not in audit_text(org)
    assert "hush-hush" not in audit_text(org)


def test_duplicate_name_answers_409(admin_client, org):
    make_provider(org, name="Main")
    assert_envelope(admin_client.post(PROVIDERS, create_body(name="main")), 409, "ERR_PROVIDER_EXISTS")
    assert Provider.objects.filter(org=org).count() == 1


def test_same_name_in_another_org_is_fine(admin_client, other_org):
    make_provider(other_org, name="Main")
    assert admin_client.post(PROVIDERS, create_body()).status_code == 201


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"provider_type": "skynet"}, "provider_type"),
        ({"api_base": "not a url"}, "api_base"),
        ({"api_base": "ftp://93.184.216.34/"}, "api_base"),
        ({"api_base": "https://user:pw@93.184.216.34/v1"}, "api_base"),
        ({"priority": -1}, "priority"),
        ({"priority": 40000}, "priority"),
        ({"extra_headers": ["X-A"]}, "extra_headers"),
        ({"extra_headers": {"bad header": "x"}}, "extra_headers"),
        ({"extra_headers": {"X-A": "line\r\nbreak"}}, "extra_headers"),
        ({"extra_headers": {"Host": "evil.example"}}, "extra_headers"),
    ],
)
def test_bad_input_is_a_400_and_writes_nothing(admin_client, org, overrides, field):
    response = admin_client.post(PROVIDERS, create_body(**overrides))
    error = assert_envelope(response, 400)
    assert field in error["details"].get("fields", {}) or error["code"].startswith("ERR_OUTBOUND")
    assert not Provider.objects.filter(org=org).exists()
    assert not AuditLog.objects.filter(org=org, action="provider.created").exists()


def test_missing_name_is_a_validation_error(admin_client):
    error = assert_envelope(admin_client.post(PROVIDERS, {"api_key": "x"}), 400, "ERR_VALIDATION")
    assert "name" in error["details"]["fields"]


@pytest.mark.parametrize(
    "api_base",
    [
        "http://127.0.0.1:11434/v1",
        "http://10.0.0.1/v1",
        "http://169.254.169.254/latest",
        "http://[::1]:8000/v1",
        "http://localhost:8000/v1",
    ],
)
def test_private_api_base_is_refused(admin_client, org, api_base, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    error = assert_envelope(
        admin_client.post(PROVIDERS, create_body(api_base=api_base)), 400, "ERR_OUTBOUND_BLOCKED"
    )
    assert "api_base" in error["details"]["fields"]
    assert not Provider.objects.filter(org=org).exists()


def test_allowlisted_loopback_api_base_is_accepted(admin_client, allow_loopback):
    response = admin_client.post(PROVIDERS, create_body(api_base="http://127.0.0.1:18999/v1/"))
    assert response.status_code == 201
    assert response.json()["api_base"] == "http://127.0.0.1:18999/v1"


def test_compose_network_host_name_is_accepted_when_allowlisted(admin_client, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = ["ollama:11434"]
    response = admin_client.post(
        PROVIDERS, create_body(provider_type="ollama", api_base="http://ollama:11434/v1", api_key="")
    )
    assert response.status_code == 201, response.content
    assert response.json()["api_key_masked"] == "" and response.json()["has_api_key"] is False


def test_unresolvable_host_is_accepted_and_checked_again_at_call_time(admin_client):
    response = admin_client.post(PROVIDERS, create_body(api_base="https://llm.invalid/v1"))
    assert response.status_code == 201


def test_key_is_encrypted_at_rest(admin_client):
    provider_id = admin_client.post(PROVIDERS, create_body(extra_headers={"X-Secret": "hush-hush"})).json()[
        "id"
    ]
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key, extra_headers FROM agents_provider WHERE id = %s", [provider_id])
        raw_key, raw_headers = cursor.fetchone()
    assert RAW_KEY not in raw_key and raw_key.startswith("gAAAA")
    assert "hush-hush" not in raw_headers and raw_headers.startswith("gAAAA")


# --- roles, tenancy, scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reads_providers(org, role):
    provider = make_provider(org)
    _user, client = client_with_role(org, role)
    listing = client.get(PROVIDERS)
    assert listing.status_code == 200
    assert [item["id"] for item in listing.json()["items"]] == [str(provider.pk)]
    detail = client.get(url(provider))
    assert detail.status_code == 200 and detail.json()["api_key_masked"] == "sk-…WXYZ"
    assert RAW_KEY not in listing.content.decode() + detail.content.decode()


@pytest.mark.parametrize(
    "role, allowed", [(Role.VIEWER, False), (Role.MEMBER, False), (Role.ADMIN, True), (Role.OWNER, True)]
)
def test_only_admins_and_owners_write(org, role, allowed):
    provider = make_provider(org, name="Existing")
    _user, client = client_with_role(org, role)
    responses = [
        client.post(PROVIDERS, create_body(name=f"New {role}")),
        client.patch(url(provider), {"priority": 7}),
        client.post(url(provider, "/verify"), {}),
    ]
    if allowed:
        assert [r.status_code for r in responses[:2]] == [201, 200]
        assert client.delete(url(provider)).status_code == 204
    else:
        for response in responses:
            assert_envelope(response, 403, "ERR_ROLE_REQUIRED")
        assert_envelope(client.delete(url(provider)), 403, "ERR_ROLE_REQUIRED")
        assert Provider.objects.filter(org=org).count() == 1


@pytest.mark.parametrize("role, allowed", [(Role.VIEWER, False), (Role.MEMBER, True)])
def test_model_list_needs_member(org, role, allowed, fake_upstream, allow_loopback):
    provider = make_provider(org, api_base=fake_upstream.base_url)
    _user, client = client_with_role(org, role)
    response = client.get(url(provider, "/models"))
    if allowed:
        assert response.status_code == 200, response.content
    else:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_anonymous_callers_get_401(anon_client, org):
    provider = make_provider(org)
    assert_envelope(anon_client.get(PROVIDERS), 401)
    assert_envelope(anon_client.post(PROVIDERS, create_body()), 401)
    assert_envelope(anon_client.get(url(provider)), 401)
    assert_envelope(anon_client.get(url(provider, "/models")), 401)
    assert_envelope(anon_client.post(url(provider, "/verify"), {}), 401)


def test_other_orgs_providers_answer_404(outsider_client, org, other_org):
    provider = make_provider(org)
    make_provider(other_org, name="Theirs")
    assert [p["name"] for p in outsider_client.get(PROVIDERS).json()["items"]] == ["Theirs"]
    assert_envelope(outsider_client.get(url(provider)), 404)
    assert_envelope(outsider_client.patch(url(provider), {"name": "Hijack"}), 404)
    assert_envelope(outsider_client.delete(url(provider)), 404)
    assert_envelope(outsider_client.get(url(provider, "/models")), 404)
    assert_envelope(outsider_client.post(url(provider, "/verify"), {}), 404)
    provider.refresh_from_db()
    assert provider.name != "Hijack"


def test_unknown_id_answers_404(admin_client):
    assert_envelope(admin_client.get(url(uuid.uuid4())), 404)


def test_api_key_scopes_are_enforced(org, owner):
    from rest_framework.test import APIClient

    make_provider(org)
    _key, reader = service_key(org, owner, Role.ADMIN, scopes=["providers:read"])
    _key, writer = service_key(org, owner, Role.ADMIN, scopes=["providers:write"])
    _key, other = service_key(org, owner, Role.ADMIN, scopes=["agents:*"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {reader}")
    assert client.get(PROVIDERS).status_code == 200
    assert_envelope(client.post(PROVIDERS, create_body()), 403, "ERR_SCOPE_REQUIRED")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {writer}")
    assert client.post(PROVIDERS, create_body()).status_code == 201
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {other}")
    assert_envelope(client.get(PROVIDERS), 403, "ERR_SCOPE_REQUIRED")


# --- list, update, delete ------------------------------------------------------------------------------


def test_list_is_in_failover_order_and_paginated(admin_client, org):
    make_provider(org, name="b", priority=10)
    make_provider(org, name="a", priority=10)
    make_provider(org, name="z", priority=1)
    body = admin_client.get(PROVIDERS, {"limit": 2}).json()
    assert body["total"] == 3 and body["limit"] == 2 and body["offset"] == 0
    assert [p["name"] for p in body["items"]] == ["z", "a"]


def test_patch_changes_only_given_fields_and_is_audited(admin_client, org):
    provider = make_provider(org, name="Old", priority=3)
    response = admin_client.patch(url(provider), {"name": "New", "enabled": False})
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "New" and body["enabled"] is False and body["priority"] == 3
    provider.refresh_from_db()
    assert provider.api_key == RAW_KEY
    row = AuditLog.objects.get(org=org, action="provider.updated")
    assert row.changes == {"enabled": [True, False], "name": ["Old", "New"]}
    assert RAW_KEY not in audit_text(org)


def test_patch_rotating_the_key_clears_verification(admin_client, org):
    from django.utils import timezone

    provider = make_provider(org, is_verified=True, verified_at=timezone.now(), last_error="")
    new_key = "sk-other-00000000000000000000000000001234"
    response = admin_client.patch(url(provider), {"api_key": new_key})
    assert response.status_code == 200
    assert response.json()["api_key_masked"] == "sk-…1234"
    assert response.json()["is_verified"] is False and response.json()["verified_at"] is None
    assert new_key not in response.content.decode()
    provider.refresh_from_db()
    assert provider.api_key == new_key
    row = AuditLog.objects.get(org=org, action="provider.updated")
    assert row.changes["api_key_masked"] == ["sk-…WXYZ", "sk-…1234"]
    assert new_key not in audit_text(org) and RAW_KEY not in audit_text(org)


def test_patch_with_empty_key_removes_it(admin_client, org):
    provider = make_provider(org)
    assert admin_client.patch(url(provider), {"api_key": ""}).json()["has_api_key"] is False
    provider.refresh_from_db()
    assert provider.api_key == ""


def test_patch_to_a_taken_name_is_409(admin_client, org):
    make_provider(org, name="Taken")
    provider = make_provider(org, name="Mine")
    assert_envelope(admin_client.patch(url(provider), {"name": "TAKEN"}), 409, "ERR_PROVIDER_EXISTS")


def test_patch_to_a_private_base_is_refused_and_keeps_the_old_one(admin_client, org, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    provider = make_provider(org)
    assert_envelope(
        admin_client.patch(url(provider), {"api_base": "http://169.254.169.254/"}),
        400,
        "ERR_OUTBOUND_BLOCKED",
    )
    provider.refresh_from_db()
    assert provider.api_base == PUBLIC_BASE


def test_patch_replaces_and_clears_extra_headers(admin_client, org):
    provider = make_provider(org, extra_headers=json.dumps({"X-Old": "1"}))
    assert admin_client.patch(url(provider), {"extra_headers": {"X-New": "2"}}).json()[
        "extra_header_names"
    ] == ["X-New"]
    assert admin_client.patch(url(provider), {"extra_headers": None}).json()["extra_header_names"] == []


def test_noop_patch_writes_no_audit_row(admin_client, org):
    provider = make_provider(org, name="Same")
    assert admin_client.patch(url(provider), {"name": "Same"}).status_code == 200
    assert not AuditLog.objects.filter(org=org, action="provider.updated").exists()


def test_delete_removes_the_provider_and_is_audited(admin_client, org):
    provider = make_provider(org)
    assert admin_client.delete(url(provider)).status_code == 204
    assert not Provider.objects.filter(pk=provider.pk).exists()
    row = AuditLog.objects.get(org=org, action="provider.deleted")
    assert row.entity_id == str(provider.pk) and row.before["api_key_masked"] == "sk-…WXYZ"
    assert_envelope(admin_client.get(url(provider)), 404)


def test_short_keys_are_masked_without_revealing_them(admin_client):
    body = admin_client.post(PROVIDERS, create_body(api_key="abc12345xyz")).json()
    assert body["api_key_masked"] == "…yz"


# --- models and verify against the fake upstream -------------------------------------------------------


@pytest.fixture
def live_provider(org, fake_upstream, allow_loopback):
    return make_provider(org, name="Fake", api_base=fake_upstream.base_url, api_key=f"sk-{uuid.uuid4().hex}")


@pytest.fixture
def refusing_provider(org, fake_upstream, allow_loopback):
    """A provider whose key the fake refuses with 401 on every endpoint."""
    return make_provider(
        org, name="Refused", api_base=fake_upstream.base_url, api_key=f"fail-401-{uuid.uuid4().hex}"
    )


def test_models_lists_the_upstream_models(member_client, live_provider):
    response = member_client.get(url(live_provider, "/models"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert "fake-model-1" in [m["id"] for m in body["items"]]
    assert body["total"] == len(body["items"])


def test_models_are_cached_for_five_minutes(member_client, live_provider, settings):
    first = member_client.get(url(live_provider, "/models")).json()
    # The endpoint now points at a blocked address; the cached answer still serves.
    Provider.objects.filter(pk=live_provider.pk).update(api_base="http://127.0.0.2:1/v1")
    assert member_client.get(url(live_provider, "/models")).json() == first


def test_editing_a_provider_invalidates_its_cached_models(admin_client, live_provider, settings):
    assert admin_client.get(url(live_provider, "/models")).status_code == 200
    settings.OUTBOUND_ALLOWED_HOSTS = ["127.0.0.1"]
    assert admin_client.patch(url(live_provider), {"api_base": "http://127.0.0.1:9/v1"}).status_code == 200
    response = admin_client.get(url(live_provider, "/models"))
    assert response.status_code in (424, 502), response.content


def test_models_of_a_provider_refusing_the_key_is_a_clean_error(member_client, refusing_provider):
    response = member_client.get(url(refusing_provider, "/models"))
    error = assert_envelope(response, 424, "ERR_PROVIDER_AUTH")
    assert refusing_provider.api_key not in json.dumps(error)


def test_verify_reachability_marks_the_provider_verified(admin_client, live_provider, org):
    response = admin_client.post(url(live_provider, "/verify"), {})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["valid"] is True and "error" not in body
    assert isinstance(body["latency_ms"], float | int) and body["latency_ms"] >= 0
    live_provider.refresh_from_db()
    assert live_provider.is_verified is True and live_provider.verified_at is not None
    assert live_provider.last_error == ""
    assert AuditLog.objects.filter(org=org, action="provider.verified").exists()


def test_verify_with_a_model_makes_a_real_completion(admin_client, live_provider):
    body = admin_client.post(url(live_provider, "/verify"), {"model": "fake-model-1"}).json()
    assert body["valid"] is True


def test_verify_with_a_failing_model_stores_the_error(admin_client, live_provider):
    body = admin_client.post(url(live_provider, "/verify"), {"model": "fail-500"}).json()
    assert body["valid"] is False and body["error"]
    live_provider.refresh_from_db()
    assert live_provider.is_verified is False and live_provider.last_error


def test_verify_of_a_refused_key_is_invalid_and_never_echoes_the_key(admin_client, refusing_provider, org):
    response = admin_client.post(url(refusing_provider, "/verify"), {})
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False and body["error"] and body["error_code"] == "ERR_PROVIDER_AUTH"
    refusing_provider.refresh_from_db()
    assert refusing_provider.is_verified is False and refusing_provider.last_error
    assert refusing_provider.api_key not in response.content.decode()
    assert refusing_provider.api_key not in refusing_provider.last_error
    assert refusing_provider.api_key not in audit_text(org)


def test_verify_of_a_closed_port_is_invalid(admin_client, org, allow_loopback):
    provider = make_provider(org, api_base="http://127.0.0.1:9/v1")
    body = admin_client.post(url(provider, "/verify"), {}).json()
    assert body["valid"] is False and body["error"]
    provider.refresh_from_db()
    assert provider.is_verified is False


def test_verify_of_a_blocked_address_is_invalid_without_connecting(admin_client, org, settings):
    provider = make_provider(org, api_base="http://10.0.0.1/v1")  # stored before an allowlist change
    settings.OUTBOUND_ALLOWED_HOSTS = []
    body = admin_client.post(url(provider, "/verify"), {}).json()
    assert body["valid"] is False


def test_verify_rejects_a_bad_model_field(admin_client, live_provider):
    assert_envelope(
        admin_client.post(url(live_provider, "/verify"), {"model": "x" * 201}), 400, "ERR_VALIDATION"
    )


# --- the catalogue -----------------------------------------------------------------------------------------


CATALOGUE = "/api/v1/models"


def test_catalogue_lists_models_of_every_enabled_provider(viewer_client, org, live_provider, fake_upstream):
    second = make_provider(
        org, name="Second", api_base=fake_upstream.base_url, api_key="sk-second-key-000000"
    )
    make_provider(org, name="Off", api_base=fake_upstream.base_url, enabled=False)
    response = viewer_client.get(CATALOGUE)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["errors"] == []
    pairs = {(m["id"], m["provider"]["name"]) for m in body["items"]}
    assert ("fake-model-1", "Fake") in pairs and ("fake-model-1", "Second") in pairs
    assert not any(m["provider"]["name"] == "Off" for m in body["items"])
    assert {m["provider"]["id"] for m in body["items"]} == {str(live_provider.pk), str(second.pk)}
    assert body["total"] == len(body["items"])


def test_one_failing_provider_does_not_fail_the_catalogue(viewer_client, live_provider, refusing_provider):
    body = viewer_client.get(CATALOGUE).json()
    assert [m["provider"]["name"] for m in body["items"]] == ["Fake"]
    assert len(body["errors"]) == 1
    error = body["errors"][0]
    assert error["provider"] == {"id": str(refusing_provider.pk), "name": "Refused"}
    assert error["code"] == "ERR_PROVIDER_AUTH" and error["message"]
    assert refusing_provider.api_key not in json.dumps(body)


def test_catalogue_is_cached_per_org(viewer_client, live_provider, org):
    first = viewer_client.get(CATALOGUE).json()
    Provider.objects.filter(pk=live_provider.pk).update(api_key="fail-401-now")  # updated_at unchanged
    assert viewer_client.get(CATALOGUE).json() == first


def test_catalogue_of_an_org_without_providers_is_empty(viewer_client):
    assert viewer_client.get(CATALOGUE).json() == {
        "items": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
        "errors": [],
    }


def test_catalogue_shows_only_the_callers_org(outsider_client, live_provider):
    assert outsider_client.get(CATALOGUE).json()["items"] == []


def test_catalogue_needs_authentication(anon_client):
    assert_envelope(anon_client.get(CATALOGUE), 401)
