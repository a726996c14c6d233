"""django-allauth adapters: the platform's signup policy decides who may sign up."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter

# Where GET /api/v1/invites/{token} leaves the token, so that the signup that follows may use it.
PENDING_INVITE_SESSION_KEY = "pending_invite_token"


def pending_invite_token(request) -> str | None:
    session = getattr(request, "session", None)
    return session.get(PENDING_INVITE_SESSION_KEY) if session is not None else None


class AccountAdapter(DefaultAccountAdapter):
    """Signup follows the staff setting: open, invite_only, waitlist or closed."""

    def is_open_for_signup(self, request) -> bool:
        from accounts.services.signup import signup_allowed

        return signup_allowed(invite_token=pending_invite_token(request))


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """Social signups obey the same policy as email signups."""

    def is_open_for_signup(self, request, sociallogin) -> bool:
        from accounts.services.signup import signup_allowed

        return signup_allowed(invite_token=pending_invite_token(request))
