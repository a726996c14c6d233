"""AI settings: the org's primary provider and model and whether personal keys are allowed (ADMIN
only; the provider must be the org's own), and a member's personal key (browser session only;
refused where the org disallows personal keys; the key is write-only and shown masked)."""

from __future__ import annotations

import json
import uuid

import pytest
from rest_framework.test import APIClient

from accounts.models import AuditLog, Role
from agents.models import OrgAIConfig, PersonalAIConfig
from tests.accounts.factories_orgs import ROLES, client_with_role, personal_key, service_key
from tests.agents.test_providers import audit_text, make_provider
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db

ORG_CONFIG = "/api/v1/org/ai-config"
MY_CONFIG = "/api/v1/me/ai-config"
PERSONAL_KEY = "sk-personal-0123456789abcdefghijklmnopQRST"
PUBLIC_BASE = "https://93.184.216.34/v1"


@pytest.fixture
def admin_client(org):
    return client_with_role(org, Role.ADMIN)[1]


def allow_personal_keys(org, allowed=True):
    OrgAIConfig.objects.update_or_create(org=org, defaults={"allow_personal_keys": allowed})


# --- /org/ai-config ------------------------------------------------------------------------------------


def test_default_org_config_has_nothing_set(admin_client):
    body = admin_client.get(ORG_CONFIG).json()
    assert body == {
        "primary_provider": None,
        "primary_provider_name": None,
        "primary_model": "",
        "allow_personal_keys": False,
        "updated_at": None,
    }


def test_admin_sets_primary_provider_model_and_personal_keys(admin_client, org):
    provider = make_provider(org, name="Main")
    response = admin_client.put(
        ORG_CONFIG,
        {"primary_provider": str(provider.pk), "primary_model": "gpt-x", "allow_personal_keys": True},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["primary_provider"] == str(provider.pk) and body["primary_provider_name"] == "Main"
    assert body["primary_model"] == "gpt-x" and body["allow_personal_keys"] is True
    config = OrgAIConfig.objects.get(org=org)
    assert config.primary_provider == provider
    assert admin_client.get(ORG_CONFIG).json() == body
    row = AuditLog.objects.get(org=org, action="ai_config.updated")
    assert row.after == {
        "primary_provider": str(provider.pk),
        "primary_model": "gpt-x",
        "allow_personal_keys": True,
    }


def test_fields_left_out_keep_their_value(admin_client, org):
    provider = make_provider(org)
    admin_client.put(ORG_CONFIG, {"primary_provider": str(provider.pk), "primary_model": "m1"})
    body = admin_client.put(ORG_CONFIG, {"allow_personal_keys": True}).json()
    assert body["primary_provider"] == str(provider.pk) and body["primary_model"] == "m1"
    assert admin_client.put(ORG_CONFIG, {"primary_provider": None}).json()["primary_provider"] is None


def test_another_orgs_provider_is_refused(admin_client, org, other_org):
    theirs = make_provider(other_org)
    error = assert_envelope(
        admin_client.put(ORG_CONFIG, {"primary_provider": str(theirs.pk)}), 400, "ERR_INVALID_PROVIDER"
    )
    assert "primary_provider" in error["details"]["fields"]
    assert not OrgAIConfig.objects.filter(org=org).exists()


def test_unknown_provider_and_bad_input_are_400(admin_client, org):
    assert_envelope(admin_client.put(ORG_CONFIG, {"primary_provider": str(uuid.uuid4())}), 400)
    assert_envelope(admin_client.put(ORG_CONFIG, {"primary_provider": "nope"}), 400, "ERR_VALIDATION")
    assert_envelope(admin_client.put(ORG_CONFIG, {"primary_model": "x" * 201}), 400, "ERR_VALIDATION")
    assert_envelope(admin_client.put(ORG_CONFIG, {"allow_personal_keys": "maybe"}), 400, "ERR_VALIDATION")
    assert not OrgAIConfig.objects.filter(org=org).exists()


def test_delete_resets_to_defaults_and_is_audited(admin_client, org):
    provider = make_provider(org)
    admin_client.put(ORG_CONFIG, {"primary_provider": str(provider.pk), "allow_personal_keys": True})
    assert admin_client.delete(ORG_CONFIG).status_code == 204
    assert admin_client.get(ORG_CONFIG).json()["primary_provider"] is None
    assert not OrgAIConfig.objects.filter(org=org).exists()
    assert AuditLog.objects.filter(org=org, action="ai_config.reset").exists()
    assert admin_client.delete(ORG_CONFIG).status_code == 204  # idempotent


def test_deleting_the_primary_provider_leaves_the_config_without_one(admin_client, org):
    provider = make_provider(org)
    admin_client.put(ORG_CONFIG, {"primary_provider": str(provider.pk), "primary_model": "m"})
    admin_client.delete(f"/api/v1/providers/{provider.pk}")
    body = admin_client.get(ORG_CONFIG).json()
    assert body["primary_provider"] is None and body["primary_model"] == "m"


@pytest.mark.parametrize(
    "role, allowed", [(Role.VIEWER, False), (Role.MEMBER, False), (Role.ADMIN, True), (Role.OWNER, True)]
)
def test_org_config_is_admin_only(org, role, allowed):
    _user, client = client_with_role(org, role)
    responses = [
        client.get(ORG_CONFIG),
        client.put(ORG_CONFIG, {"allow_personal_keys": True}),
        client.delete(ORG_CONFIG),
    ]
    if allowed:
        assert [r.status_code for r in responses] == [200, 200, 204]
    else:
        for response in responses:
            assert_envelope(response, 403, "ERR_ROLE_REQUIRED")
        assert not OrgAIConfig.objects.filter(org=org).exists()


def test_org_config_is_per_org(outsider_client, org, other_org):
    allow_personal_keys(org)
    assert outsider_client.get(ORG_CONFIG).json()["allow_personal_keys"] is False
    outsider_client.put(ORG_CONFIG, {"primary_model": "theirs"})
    assert OrgAIConfig.objects.get(org=org).primary_model == ""
    assert OrgAIConfig.objects.get(org=other_org).primary_model == "theirs"


def test_org_config_needs_authentication(anon_client):
    assert_envelope(anon_client.get(ORG_CONFIG), 401)
    assert_envelope(anon_client.put(ORG_CONFIG, {}), 401)


def test_org_config_works_with_a_scoped_api_key(org, owner):
    _key, raw = service_key(org, owner, Role.ADMIN, scopes=["providers:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.put(ORG_CONFIG, {"primary_model": "m"}).status_code == 200
    _key, raw = service_key(org, owner, Role.ADMIN, scopes=["agents:write"])
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.get(ORG_CONFIG), 403, "ERR_SCOPE_REQUIRED")


# --- /me/ai-config ------------------------------------------------------------------------------------------


def test_my_config_shows_disallowed_when_the_org_does_not_allow_personal_keys(member_client):
    body = member_client.get(MY_CONFIG).json()
    assert body["allowed"] is False and body["configured"] is False
    assert body["api_key_masked"] == "" and body["provider_type"] == "openai_compat"


def test_saving_a_personal_key_is_refused_when_disallowed(member_client, member):
    response = member_client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY})
    assert_envelope(response, 403, "ERR_PERSONAL_KEYS_DISABLED")
    assert not PersonalAIConfig.objects.filter(user=member).exists()


def test_member_saves_a_personal_key_and_sees_it_masked(member_client, member, org):
    allow_personal_keys(org)
    response = member_client.patch(
        MY_CONFIG,
        {"provider_type": "openrouter", "api_base": PUBLIC_BASE, "api_key": PERSONAL_KEY, "model": "m1"},
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["allowed"] is True and body["configured"] is True
    assert body["provider_type"] == "openrouter" and body["api_base"] == PUBLIC_BASE
    assert body["api_key_masked"] == "sk-…QRST" and body["model"] == "m1"
    assert PERSONAL_KEY not in response.content.decode()
    assert PERSONAL_KEY not in member_client.get(MY_CONFIG).content.decode()
    assert PersonalAIConfig.objects.get(user=member).api_key == PERSONAL_KEY
    row = AuditLog.objects.get(org=org, action="ai_config.personal_updated")
    assert row.actor == member and row.after["api_key_masked"] == "sk-…QRST"
    assert PERSONAL_KEY not in audit_text(org)


def test_personal_key_is_encrypted_at_rest(member_client, member, org):
    allow_personal_keys(org)
    member_client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY})
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM agents_personalaiconfig WHERE user_id = %s", [member.pk])
        (raw,) = cursor.fetchone()
    assert PERSONAL_KEY not in raw and raw.startswith("gAAAA")


def test_personal_patch_changes_only_given_fields(member_client, member, org):
    allow_personal_keys(org)
    member_client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY, "model": "m1"})
    body = member_client.patch(MY_CONFIG, {"model": "m2"}).json()
    assert body["model"] == "m2" and body["api_key_masked"] == "sk-…QRST"


def test_personal_api_base_goes_through_the_outbound_guard(member_client, member, org, settings):
    settings.OUTBOUND_ALLOWED_HOSTS = []
    allow_personal_keys(org)
    response = member_client.patch(
        MY_CONFIG, {"api_base": "http://169.254.169.254/", "api_key": PERSONAL_KEY}
    )
    assert_envelope(response, 400, "ERR_OUTBOUND_BLOCKED")
    assert not PersonalAIConfig.objects.filter(user=member).exists()


def test_personal_bad_input_is_400(member_client, org):
    allow_personal_keys(org)
    assert_envelope(member_client.patch(MY_CONFIG, {"provider_type": "nope"}), 400, "ERR_VALIDATION")
    assert_envelope(member_client.patch(MY_CONFIG, {"api_base": "ftp://x.example/"}), 400)
    assert_envelope(member_client.patch(MY_CONFIG, {"model": "x" * 201}), 400, "ERR_VALIDATION")


def test_delete_forgets_the_personal_key_even_when_disallowed(member_client, member, org):
    allow_personal_keys(org)
    member_client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY})
    allow_personal_keys(org, allowed=False)
    assert member_client.delete(MY_CONFIG).status_code == 204
    assert not PersonalAIConfig.objects.filter(user=member).exists()
    assert AuditLog.objects.filter(org=org, action="ai_config.personal_deleted").exists()
    assert member_client.delete(MY_CONFIG).status_code == 204


def test_personal_config_belongs_to_the_caller_only(member_client, member, owner_client, org):
    allow_personal_keys(org)
    member_client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY})
    assert owner_client.get(MY_CONFIG).json()["configured"] is False


def test_my_config_refuses_api_keys(org, member):
    allow_personal_keys(org)
    _key, raw = personal_key(org, member)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.get(MY_CONFIG), 403, "ERR_SESSION_REQUIRED")
    assert_envelope(client.patch(MY_CONFIG, {"api_key": PERSONAL_KEY}), 403, "ERR_SESSION_REQUIRED")
    assert not PersonalAIConfig.objects.filter(user=member).exists()


@pytest.mark.parametrize("role", ROLES)
def test_my_config_needs_member(org, role):
    allow_personal_keys(org)
    _user, client = client_with_role(org, role)
    response = client.patch(MY_CONFIG, {"model": "m"})
    if role == Role.VIEWER:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")
        assert_envelope(client.get(MY_CONFIG), 403, "ERR_ROLE_REQUIRED")
    else:
        assert response.status_code == 200


def test_my_config_needs_authentication(anon_client):
    assert_envelope(anon_client.get(MY_CONFIG), 401)
    assert_envelope(anon_client.patch(MY_CONFIG, {"model": "m"}), 401)


def test_allowed_follows_the_org_the_caller_acts_in(member_client, member, org, other_org):
    from tests.factories import MembershipFactory

    MembershipFactory(org=other_org, user=member, role=Role.MEMBER)
    allow_personal_keys(other_org)
    assert member_client.get(MY_CONFIG, HTTP_X_ORG_ID=str(org.pk)).json()["allowed"] is False
    assert member_client.get(MY_CONFIG, HTTP_X_ORG_ID=str(other_org.pk)).json()["allowed"] is True
    assert (
        json.loads(member_client.get(MY_CONFIG, HTTP_X_ORG_ID=str(other_org.pk)).content)["configured"]
        is False
    )
