"""django-allauth adapters: the platform's signup policy decides who may sign up.

Both the email signup and the social signup ask :func:`accounts.services.signup.signup_allowed`;
in the invite modes the pending invite (left in the session by ``GET /api/v1/invites/{token}``)
is what opens the door, and an email signup must then use the invited address.

allauth's failed-login limit (``ACCOUNT_RATE_LIMITS["login_failed"]``) is answered with 429, like
every other rate limit of the platform, instead of allauth's form error.
"""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context as allauth_context
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django import forms

# Where GET /api/v1/invites/{token} leaves the token, so that the signup that follows may use it.
PENDING_INVITE_SESSION_KEY = "pending_invite_token"


def pending_invite_token(request) -> str | None:
    """The invite token this browser session is carrying, if any."""
    session = getattr(request, "session", None)
    return session.get(PENDING_INVITE_SESSION_KEY) if session is not None else None


def clear_pending_invite_token(request) -> None:
    """Forget the token once a signup used it (it is single use anyway)."""
    session = getattr(request, "session", None)
    if session is not None:
        session.pop(PENDING_INVITE_SESSION_KEY, None)


class AccountAdapter(DefaultAccountAdapter):
    """Signup follows the staff setting: open, invite_only, waitlist or closed."""

    def is_open_for_signup(self, request) -> bool:
        from accounts.services.signup import signup_allowed

        return signup_allowed(invite_token=pending_invite_token(request))

    def pre_authenticate(self, request, **credentials) -> None:
        """Too many failed logins (per IP or per address) is a 429, not a form error."""
        try:
            super().pre_authenticate(request, **credentials)
        except forms.ValidationError as exc:
            if exc.code != "too_many_login_attempts":
                raise
            from allauth.core.internal.ratelimit import respond_429

            raise ImmediateHttpResponse(respond_429(request)) from exc

    def clean_email(self, email: str) -> str:
        """In the invite modes, a signup must use the address the invite went to."""
        email = super().clean_email(email)
        request = getattr(allauth_context, "request", None)
        user = getattr(request, "user", None)
        if request is None or (user is not None and user.is_authenticated):
            return email  # adding an address to an existing account is not a signup
        from accounts.services.signup import signup_email_allowed

        token = pending_invite_token(request)
        if token and not signup_email_allowed(email=email, invite_token=token):
            raise forms.ValidationError("This invitation was sent to another email address.")
        return email


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Social signups obey the same policy as email signups."""

    def is_open_for_signup(self, request, sociallogin) -> bool:
        from accounts.services.signup import signup_allowed

        return signup_allowed(invite_token=pending_invite_token(request))
