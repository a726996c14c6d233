"""First-run setup: GET /api/v1/auth/setup-status and the one-shot POST /api/v1/auth/setup."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from accounts.models import AuditLog, Membership, PlatformSettings, Role, SignupMode, User
from tests.accounts.factories_setup import set_signup_mode
from tests.core.test_errors import assert_envelope

SETUP = "/api/v1/auth/setup"
STATUS = "/api/v1/auth/setup-status"
GOOD = {"email": "Founder@Example.com", "password": "a-Long-enough-pass-42", "org_name": "Acme"}


@pytest.fixture
def csrf_client():
    """A browser that enforces CSRF like a real one: setup must work before any token exists."""
    return APIClient(enforce_csrf_checks=True)


@pytest.mark.django_db
def test_status_before_setup_says_not_bootstrapped(anon_client):
    response = anon_client.get(STATUS)
    assert response.status_code == 200
    assert response.json() == {
        "bootstrapped": False,
        "signup_mode": SignupMode.INVITE_ONLY,
        "login_methods": ["email"],
        "mfa": ["totp", "recovery_codes"],
    }


@pytest.mark.django_db
def test_status_reports_the_current_signup_mode(anon_client):
    set_signup_mode(SignupMode.WAITLIST)
    assert anon_client.get(STATUS).json()["signup_mode"] == "waitlist"


@pytest.mark.django_db
def test_status_lists_configured_social_providers_after_email(anon_client, settings, monkeypatch):
    from allauth.socialaccount.providers import registry
    from allauth.socialaccount.providers.github.provider import GitHubProvider

    # What settings.py does when GITHUB_CLIENT_ID is set: the provider is installed and has an app.
    monkeypatch.setattr(registry, "get_class_list", lambda: [GitHubProvider])
    settings.SOCIALACCOUNT_PROVIDERS = {"github": {"APPS": [{"client_id": "id", "secret": "s"}]}}
    assert anon_client.get(STATUS).json()["login_methods"] == ["email", "github"]


@pytest.mark.django_db
def test_setup_creates_the_staff_owner_and_org_and_logs_in(csrf_client):
    response = csrf_client.post(SETUP, GOOD, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    user = User.objects.get()
    assert body["user"] == {"id": str(user.pk), "email": "founder@example.com"}
    assert body["org"]["name"] == "Acme"
    assert user.is_staff and user.is_superuser
    assert user.check_password(GOOD["password"])
    membership = Membership.objects.get(user=user)
    assert str(membership.org_id) == body["org"]["id"]
    assert membership.role == Role.OWNER
    assert PlatformSettings.objects.get(pk=1).bootstrapped_at is not None
    # The session cookie signs the caller in.
    assert "sessionid" in response.cookies
    me = csrf_client.get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["email"] == "founder@example.com"


@pytest.mark.django_db
def test_setup_is_audited(anon_client):
    anon_client.post(SETUP, GOOD, format="json")
    row = AuditLog.objects.get(action="platform.setup")
    assert row.actor_email == "founder@example.com"
    assert row.org is not None and row.org.name == "Acme"
    assert AuditLog.objects.filter(action="org.created").exists()


@pytest.mark.django_db
def test_status_after_setup_says_bootstrapped(anon_client):
    anon_client.post(SETUP, GOOD, format="json")
    assert anon_client.get(STATUS).json()["bootstrapped"] is True


@pytest.mark.django_db
def test_second_setup_is_a_conflict(anon_client):
    assert anon_client.post(SETUP, GOOD, format="json").status_code == 201
    other = {**GOOD, "email": "second@example.com"}
    assert_envelope(APIClient().post(SETUP, other, format="json"), 409, "ERR_ALREADY_SET_UP")
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_setup_after_bootstrap_is_a_conflict(anon_client):
    from io import StringIO

    from django.core.management import call_command

    call_command(
        "bootstrap", email="ops@example.com", password=GOOD["password"], org="Ops", stdout=StringIO()
    )
    assert_envelope(anon_client.post(SETUP, GOOD, format="json"), 409, "ERR_ALREADY_SET_UP")


@pytest.mark.django_db
@pytest.mark.parametrize("password", ["short", "12345678901", "password123", "founder-example"])
def test_weak_password_is_refused_with_field_errors(anon_client, password):
    response = anon_client.post(SETUP, {**GOOD, "password": password}, format="json")
    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert error["details"]["fields"]["password"]
    assert not User.objects.exists()
    assert PlatformSettings.objects.filter(bootstrapped_at__isnull=False).count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, field",
    [
        ({"password": GOOD["password"], "org_name": "Acme"}, "email"),
        ({**GOOD, "email": "not-an-email"}, "email"),
        ({"email": "a@example.com", "org_name": "Acme"}, "password"),
        ({"email": "a@example.com", "password": GOOD["password"]}, "org_name"),
        ({**GOOD, "org_name": "x" * 201}, "org_name"),
        ({**GOOD, "org_name": "   "}, "org_name"),
    ],
)
def test_bad_input_is_a_validation_error(anon_client, body, field):
    error = assert_envelope(anon_client.post(SETUP, body, format="json"), 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]
    assert not User.objects.exists()


@pytest.mark.django_db
def test_setup_with_an_existing_address_is_refused(anon_client):
    User.objects.create_user(email="founder@example.com", password="x")
    error = assert_envelope(anon_client.post(SETUP, GOOD, format="json"), 400, "ERR_VALIDATION")
    assert "email" in error["details"]["fields"]
    assert PlatformSettings.objects.filter(bootstrapped_at__isnull=False).count() == 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_setups_create_exactly_one_owner():
    attempts = 6
    barrier = threading.Barrier(attempts)
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt(n: int) -> None:
        try:
            client = APIClient()
            barrier.wait(timeout=10)
            response = client.post(SETUP, {**GOOD, "email": f"racer{n}@example.com"}, format="json")
            with lock:
                statuses.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(statuses) == [201] + [409] * (attempts - 1)
    assert User.objects.count() == 1
    assert Membership.objects.filter(role=Role.OWNER).count() == 1
    assert AuditLog.objects.filter(action="platform.setup").count() == 1
