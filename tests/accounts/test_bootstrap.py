"""``manage.py bootstrap`` (scripted installs) and ``manage.py ensure_admin`` (run by `make run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import ApiKey, AuditLog, Membership, Organization, PlatformSettings, Role, User
from tests.accounts.factories_setup import key_client
from tests.factories import MembershipFactory, UserFactory

PASSWORD = "a-Long-enough-pass-42"


def bootstrap(*args: str) -> str:
    out = StringIO()
    call_command("bootstrap", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def ensure_admin() -> str:
    out = StringIO()
    call_command("ensure_admin", stdout=out, stderr=StringIO())
    return out.getvalue()


def _is_bootstrapped() -> bool:
    return PlatformSettings.objects.filter(pk=1, bootstrapped_at__isnull=False).exists()


# --- bootstrap ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bootstrap_creates_the_staff_owner_and_org():
    out = bootstrap("--email", "Ops@Example.com", "--password", PASSWORD, "--org", "Ops")
    user = User.objects.get()
    assert user.email == "ops@example.com"
    assert user.is_staff and user.is_superuser and user.check_password(PASSWORD)
    membership = Membership.objects.get(user=user)
    assert (membership.org.name, membership.role) == ("Ops", Role.OWNER)
    assert _is_bootstrapped()
    assert len(out.splitlines()) == 1 and "ops@example.com" in out and "Ops" in out
    assert AuditLog.objects.filter(action="platform.bootstrap", actor=user).exists()


@pytest.mark.django_db
def test_bootstrap_with_api_key_prints_only_a_working_owner_service_key(client):
    out = bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops", "--api-key")

    lines = out.splitlines()
    assert len(lines) == 1 and out.endswith("\n")
    raw = lines[0]
    assert raw.startswith("svc_")
    key = ApiKey.objects.get()
    assert (key.kind, key.role, key.org.name) == (ApiKey.Kind.SERVICE, Role.OWNER, "Ops")
    api = key_client(raw)
    response = api.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json()["email"] == "ops@example.com"
    assert api.get("/api/v1/me/permissions").json()["current"]["role"] == "OWNER"


@pytest.mark.django_db
def test_bootstrap_twice_reuses_user_and_org_and_makes_a_new_key():
    first = bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops", "--api-key")
    second = bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops", "--api-key")
    assert first != second
    assert User.objects.count() == 1
    assert Organization.objects.count() == 1
    assert Membership.objects.count() == 1
    assert ApiKey.objects.count() == 2
    assert key_client(first.strip()).get("/api/v1/me").status_code == 200
    assert key_client(second.strip()).get("/api/v1/me").status_code == 200


@pytest.mark.django_db
def test_bootstrap_promotes_an_existing_user_and_sets_the_password():
    existing = UserFactory(email="ops@example.com")
    bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops")
    existing.refresh_from_db()
    assert existing.is_staff and existing.is_superuser
    assert existing.check_password(PASSWORD)
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_bootstrap_does_not_reuse_an_org_the_user_does_not_own():
    user = UserFactory(email="ops@example.com")
    someone_elses = Organization.objects.create(name="Ops", slug="ops-theirs")
    MembershipFactory(org=someone_elses, user=user, role=Role.MEMBER)
    bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops")
    owned = Membership.objects.get(user=user, role=Role.OWNER).org
    assert owned != someone_elses and owned.name == "Ops"


@pytest.mark.django_db
def test_bootstrap_after_setup_keeps_the_first_bootstrap_time(anon_client):
    anon_client.post(
        "/api/v1/auth/setup", {"email": "a@example.com", "password": PASSWORD, "org_name": "A"}, format="json"
    )
    first = PlatformSettings.objects.get(pk=1).bootstrapped_at
    bootstrap("--email", "b@example.com", "--password", PASSWORD, "--org", "B")
    assert PlatformSettings.objects.get(pk=1).bootstrapped_at == first


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args, message",
    [
        (["--email", "ops@example.com", "--password", "short", "--org", "Ops"], "password"),
        (["--email", "not-an-email", "--password", PASSWORD, "--org", "Ops"], "email"),
        (["--email", "ops@example.com", "--password", PASSWORD, "--org", "  "], "org_name"),
    ],
)
def test_bootstrap_refuses_bad_input_and_writes_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        bootstrap(*args)
    assert not User.objects.exists()
    assert not _is_bootstrapped()


@pytest.mark.django_db
def test_bootstrap_needs_all_three_options():
    with pytest.raises(CommandError):
        bootstrap("--email", "ops@example.com", "--password", PASSWORD)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_bootstrap_as_a_process_prints_only_the_key_on_stdout():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": _database_url(),
        "LOG_LEVEL": "DEBUG",
    }
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "bootstrap",
            "--email",
            "ops@example.com",
            "--password",
            PASSWORD,
            "--org",
            "Ops",
            "--api-key",
        ],
        cwd=Path(django_settings.BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert key_client(lines[0]).get("/api/v1/me").json()["email"] == "ops@example.com"


def _database_url() -> str:
    db = connection.settings_dict
    user = db.get("USER") or ""
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


# --- ensure_admin -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ensure_admin_says_how_to_finish_setup(settings):
    settings.ADMIN_EMAIL, settings.ADMIN_PASSWORD = "", ""
    settings.SITE_URL = "http://platform.test:8000"
    out = ensure_admin()
    assert out.startswith(
        "Finish setup: POST http://platform.test:8000/api/v1/auth/setup {email,password,org_name}"
    )
    assert "python manage.py bootstrap --email" in out
    assert not User.objects.exists() and not _is_bootstrapped()


@pytest.mark.django_db
def test_ensure_admin_creates_the_owner_from_the_environment(settings):
    settings.ADMIN_EMAIL, settings.ADMIN_PASSWORD = "admin@example.com", PASSWORD
    settings.ADMIN_ORG_NAME = "Headquarters"
    out = ensure_admin()
    assert out.startswith("Created owner admin@example.com")
    user = User.objects.get()
    assert user.is_staff and user.is_superuser and user.check_password(PASSWORD)
    assert Membership.objects.get(user=user).org.name == "Headquarters"
    assert _is_bootstrapped()
    # Next `make run`: already set up, nothing to say.
    assert ensure_admin() == ""
    assert User.objects.count() == 1


@pytest.mark.django_db
def test_ensure_admin_is_silent_once_set_up(settings):
    bootstrap("--email", "ops@example.com", "--password", PASSWORD, "--org", "Ops")
    settings.ADMIN_EMAIL, settings.ADMIN_PASSWORD = "", ""
    assert ensure_admin() == ""


@pytest.mark.django_db
def test_ensure_admin_with_a_weak_password_fails_loudly(settings):
    settings.ADMIN_EMAIL, settings.ADMIN_PASSWORD = "admin@example.com", "123"
    with pytest.raises(CommandError, match="ADMIN_EMAIL"):
        ensure_admin()
    assert not User.objects.exists()
