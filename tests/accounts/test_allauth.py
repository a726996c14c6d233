"""django-allauth through its headless browser API (/_allauth/browser/v1/…), as an SPA drives it:
real session cookies, the CSRF token echoed in X-CSRFToken, the platform's signup policy."""

from __future__ import annotations

import re
import time

import pytest
from allauth.mfa import app_settings as mfa_settings
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.core import mail

from accounts.adapters import PENDING_INVITE_SESSION_KEY
from accounts.models import Membership, Role, SecurityEvent, SignupMode, User, WaitlistEntry
from tests.accounts.factories_setup import (
    PASSWORD,
    Browser,
    make_invite,
    session_client,
    set_signup_mode,
    staff_user,
    unique_email,
)
from tests.factories import UserFactory

NEW_PASSWORD = "a-Fresh-password-77"


def totp_code(secret: str, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows now (or ``steps_ahead`` periods later)."""
    counter = int(time.time()) // mfa_settings.TOTP_PERIOD + steps_ahead
    return format_hotp_value(hotp_value(secret, counter))


def signup(browser: Browser, email: str, password: str = NEW_PASSWORD):
    return browser.post("/auth/signup", {"email": email, "password": password})


def login(browser: Browser, email: str, password: str = PASSWORD):
    return browser.post("/auth/login", {"email": email, "password": password})


def pending_flows(response) -> list[str]:
    return [flow["id"] for flow in response.json()["data"]["flows"] if flow.get("is_pending")]


# --- signup under each policy -------------------------------------------------------------------


@pytest.mark.django_db
def test_open_signup_creates_the_user_and_an_own_org():
    set_signup_mode(SignupMode.OPEN)
    browser, email = Browser(), unique_email()

    response = signup(browser, email)

    assert response.status_code == 200, response.content
    assert response.json()["meta"]["is_authenticated"] is True
    user = User.objects.get(email=email)
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.org.name == f"{email}'s org"
    # The allauth session is a platform session too.
    me = browser.get("/api/v1/me")
    assert me.status_code == 200 and me.json()["email"] == email


@pytest.mark.django_db
def test_signup_sends_the_email_verification_message():
    set_signup_mode(SignupMode.OPEN)
    email = unique_email()
    assert signup(Browser(), email).status_code == 200
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [email]
    assert "confirm" in mail.outbox[0].subject.lower()


@pytest.mark.django_db
@pytest.mark.parametrize("mode", [SignupMode.CLOSED, SignupMode.INVITE_ONLY, SignupMode.WAITLIST])
def test_signup_without_invite_is_refused_unless_open(mode):
    set_signup_mode(mode)
    browser, email = Browser(), unique_email()
    response = signup(browser, email)
    assert response.status_code == 403
    assert not User.objects.filter(email=email).exists()
    config = browser.get("/_allauth/browser/v1/config").json()
    assert config["data"]["account"]["is_open_for_signup"] is False


@pytest.mark.django_db
def test_signup_without_csrf_token_is_refused():
    set_signup_mode(SignupMode.OPEN)
    browser, email = Browser(), unique_email()
    response = browser.client.post(
        f"{Browser.base}/auth/signup",
        {"email": email, "password": NEW_PASSWORD},
        content_type="application/json",
    )
    assert response.status_code == 403
    assert not User.objects.filter(email=email).exists()


@pytest.mark.django_db
def test_invite_only_signup_with_the_invite_joins_the_invited_org(org, owner):
    set_signup_mode(SignupMode.INVITE_ONLY)
    email = unique_email()
    _invite, token = make_invite(org=org, email=email, role=Role.MEMBER, invited_by=owner)
    browser = Browser()

    resolved = browser.get(f"/api/v1/invites/{token}")
    assert resolved.status_code == 200, resolved.content
    response = signup(browser, email)

    assert response.status_code == 200, response.content
    user = User.objects.get(email=email)
    assert list(Membership.objects.filter(user=user).values_list("org_id", "role")) == [(org.pk, Role.MEMBER)]
    assert PENDING_INVITE_SESSION_KEY not in browser.client.session


@pytest.mark.django_db
def test_invite_only_signup_with_the_session_key_set_directly(org, owner):
    set_signup_mode(SignupMode.INVITE_ONLY)
    email = unique_email()
    _invite, token = make_invite(org=org, email=email, role=Role.VIEWER, invited_by=owner)
    browser = Browser()
    browser.set_session(**{PENDING_INVITE_SESSION_KEY: token})

    assert signup(browser, email).status_code == 200
    assert Membership.objects.get(user__email=email).role == Role.VIEWER


@pytest.mark.django_db
def test_invite_only_signup_must_use_the_invited_address(org, owner):
    set_signup_mode(SignupMode.INVITE_ONLY)
    _invite, token = make_invite(org=org, email=unique_email(), invited_by=owner)
    browser = Browser()
    browser.get(f"/api/v1/invites/{token}")
    other = unique_email()

    response = signup(browser, other)

    assert response.status_code == 400
    assert any(error.get("param") == "email" for error in response.json()["errors"])
    assert not User.objects.filter(email=other).exists()


@pytest.mark.django_db
def test_approved_waitlist_entry_can_sign_up_from_the_emailed_link(django_capture_on_commit_callbacks):
    set_signup_mode(SignupMode.WAITLIST)
    email = unique_email("wait")
    visitor = Browser()
    assert visitor.post("/api/v1/auth/waitlist", {"email": email}).status_code == 201
    assert signup(Browser(), email).status_code == 403  # not approved yet
    entry = WaitlistEntry.objects.get(email=email)
    staff = session_client(staff_user())
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.post(f"/api/v1/admin/waitlist/{entry.pk}/approve").status_code == 200
    token = re.search(r"/invites/(\S+)", mail.outbox[-1].body).group(1)

    assert visitor.get(f"/api/v1/invites/{token}").status_code == 200
    response = signup(visitor, email)

    assert response.status_code == 200, response.content
    membership = Membership.objects.get(user__email=email)
    assert membership.role == Role.OWNER  # their own org


# --- login, logout, password reset --------------------------------------------------------------


@pytest.mark.django_db
def test_login_with_email_and_password_then_logout():
    user = UserFactory(email=unique_email())
    browser = Browser()

    response = login(browser, user.email)
    assert response.status_code == 200, response.content
    assert response.json()["data"]["user"]["email"] == user.email
    assert browser.get("/auth/session").status_code == 200

    logout = browser.delete("/auth/session")
    assert logout.status_code == 401  # allauth answers "not authenticated" after logging out
    assert browser.get("/auth/session").status_code == 401
    assert browser.get("/api/v1/me").status_code == 401


@pytest.mark.django_db
def test_login_with_a_wrong_password_fails_and_is_recorded():
    user = UserFactory(email=unique_email())
    browser = Browser()
    response = login(browser, user.email, "wrong-password")
    assert response.status_code == 400
    assert browser.get("/auth/session").status_code == 401
    assert SecurityEvent.objects.filter(kind=SecurityEvent.Kind.LOGIN_FAILED, identifier=user.email).exists()


@pytest.mark.django_db
def test_password_reset_request_sends_an_email():
    user = UserFactory(email=unique_email())
    response = Browser().post("/auth/password/request", {"email": user.email})
    assert response.status_code == 200, response.content
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == [user.email]
    assert "password" in mail.outbox[0].subject.lower()


@pytest.mark.django_db
def test_repeated_failed_logins_are_rate_limited():
    user = UserFactory(email=unique_email())
    browser = Browser()
    statuses = [login(browser, user.email, f"wrong-{n}").status_code for n in range(7)]
    # ACCOUNT_RATE_LIMITS["login_failed"]: 5 failures per address in 5 minutes.
    assert statuses == [400] * 5 + [429] * 2
    # Even the right password is refused while the limit holds, from any browser.
    assert login(Browser(), user.email).status_code == 429
    assert User.objects.get(pk=user.pk).last_login is None


@pytest.mark.django_db
def test_failed_logins_of_one_address_do_not_lock_out_another():
    victim, bystander = UserFactory(email=unique_email()), UserFactory(email=unique_email())
    browser = Browser()
    for n in range(6):
        login(browser, victim.email, f"wrong-{n}")
    assert login(Browser(), bystander.email).status_code == 200


# --- MFA ----------------------------------------------------------------------------------------


def _activate_totp(browser: Browser, password: str = PASSWORD) -> str:
    # Adding an authenticator needs a fresh password check, as an SPA would prompt for.
    reauthenticated = browser.post("/auth/reauthenticate", {"password": password})
    assert reauthenticated.status_code == 200, reauthenticated.content
    pending = browser.get("/account/authenticators/totp")
    assert pending.status_code == 404, pending.content  # no authenticator yet: a secret to set up
    secret = pending.json()["meta"]["secret"]
    activated = browser.post("/account/authenticators/totp", {"code": totp_code(secret)})
    assert activated.status_code == 200, activated.content
    assert activated.json()["data"]["type"] == "totp"
    return secret


@pytest.mark.django_db
def test_totp_makes_login_need_a_second_factor(settings):
    # Let the next period's code count, so the login does not reuse the code that activated TOTP.
    settings.MFA_TOTP_TOLERANCE = 1
    user = UserFactory(email=unique_email())
    browser = Browser()
    assert login(browser, user.email).status_code == 200
    secret = _activate_totp(browser)
    browser.delete("/auth/session")

    browser = Browser()
    first_step = login(browser, user.email)
    assert first_step.status_code == 401
    assert pending_flows(first_step) == ["mfa_authenticate"]
    assert browser.get("/api/v1/me").status_code == 401  # not signed in yet

    valid_now = {totp_code(secret, step) for step in (-1, 0, 1)}
    wrong_code = next(code for code in ("000000", "111111", "222222", "333333") if code not in valid_now)
    assert browser.post("/auth/2fa/authenticate", {"code": wrong_code}).status_code == 400
    second_step = browser.post("/auth/2fa/authenticate", {"code": totp_code(secret, 1)})
    assert second_step.status_code == 200, second_step.content
    assert second_step.json()["meta"]["is_authenticated"] is True
    assert browser.get("/api/v1/me").status_code == 200


@pytest.mark.django_db
def test_activating_totp_needs_a_fresh_password_check():
    user = UserFactory(email=unique_email())
    browser = Browser()
    login(browser, user.email)
    secret = browser.get("/account/authenticators/totp").json()["meta"]["secret"]
    response = browser.post("/account/authenticators/totp", {"code": totp_code(secret)})
    assert response.status_code == 401
    assert [flow["id"] for flow in response.json()["data"]["flows"]] == ["reauthenticate"]
    assert not user.authenticator_set.exists()


@pytest.mark.django_db
def test_recovery_codes_are_listed_once_totp_is_active():
    user = UserFactory(email=unique_email())
    browser = Browser()
    login(browser, user.email)
    assert browser.get("/account/authenticators/recovery-codes").status_code == 404

    _activate_totp(browser)

    response = browser.get("/account/authenticators/recovery-codes")
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["type"] == "recovery_codes"
    assert data["total_code_count"] == len(data["unused_codes"]) == 10
    authenticators = browser.get("/account/authenticators").json()["data"]
    assert {a["type"] for a in authenticators} == {"totp", "recovery_codes"}


@pytest.mark.django_db
def test_a_recovery_code_completes_the_second_step():
    user = UserFactory(email=unique_email())
    browser = Browser()
    login(browser, user.email)
    _activate_totp(browser)
    code = browser.get("/account/authenticators/recovery-codes").json()["data"]["unused_codes"][0]
    browser.delete("/auth/session")

    browser = Browser()
    assert login(browser, user.email).status_code == 401
    response = browser.post("/auth/2fa/authenticate", {"code": code})
    assert response.status_code == 200, response.content


# --- social signups obey the same policy --------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "mode, with_invite, allowed",
    [
        (SignupMode.OPEN, False, True),
        (SignupMode.CLOSED, False, False),
        (SignupMode.CLOSED, True, False),
        (SignupMode.INVITE_ONLY, False, False),
        (SignupMode.INVITE_ONLY, True, True),
        (SignupMode.WAITLIST, True, True),
    ],
)
def test_social_signup_follows_the_signup_policy(rf, mode, with_invite, allowed, org, owner):
    from django.contrib.sessions.backends.db import SessionStore

    from accounts.adapters import SocialAccountAdapter

    set_signup_mode(mode)
    request = rf.get("/accounts/google/login/callback/")
    request.session = SessionStore()
    if with_invite:
        _invite, token = make_invite(org=org, email=unique_email(), invited_by=owner)
        request.session[PENDING_INVITE_SESSION_KEY] = token
    assert SocialAccountAdapter(request).is_open_for_signup(request, sociallogin=None) is allowed
