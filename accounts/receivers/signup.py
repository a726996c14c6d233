"""After an allauth signup: accept the pending invite, or give the new user an org.

The receiver only translates allauth's signal into a service call; the rules live in
:func:`accounts.services.signup.signup_complete`.
"""

from __future__ import annotations

from allauth.account.signals import user_signed_up
from django.dispatch import receiver

from accounts.adapters import clear_pending_invite_token, pending_invite_token


@receiver(user_signed_up, dispatch_uid="accounts.signup_complete")
def on_user_signed_up(sender, request, user, **kwargs) -> None:
    """Email and social signups alike end here."""
    from accounts.services.signup import signup_complete

    signup_complete(user=user, invite_token=pending_invite_token(request))
    clear_pending_invite_token(request)
