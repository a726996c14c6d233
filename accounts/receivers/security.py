"""Security events from failed logins and permission denials.

Two observers hand over to ``security_event_record``: Django's ``user_login_failed`` signal (sent
by ``authenticate()``, which allauth's login uses too) and the API error handler's observer hook
(``core.registries.register_error_observer``), registered when this module is imported from
``AccountsConfig.ready()``. Refused API keys are 401s recorded by ``accounts.authentication``;
this module only looks at 403s, so nothing is recorded twice.
"""

from __future__ import annotations

import logging

from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver

from accounts.models import SecurityEvent
from accounts.selectors.audit import failed_login_subject
from accounts.services.audit import security_event_record
from core.registries import register_error_observer

logger = logging.getLogger(__name__)

# Credential keys that may hold what the person typed as their login.
_IDENTIFIER_KEYS = ("email", "username", "login")

# 403 codes that mean "you may not do this" (as opposed to CSRF, missing org, ...).
DENIAL_CODES = frozenset(
    {
        "ERR_ROLE_REQUIRED",
        "ERR_SCOPE_REQUIRED",
        "ERR_PERMISSION_DENIED",
        "ERR_STAFF_ONLY",
        "ERR_SESSION_REQUIRED",
    }
)


def _login_identifier(credentials: dict) -> str:
    for key in _IDENTIFIER_KEYS:
        value = credentials.get(key)
        if value:
            return str(value).strip()
    return ""


@receiver(user_login_failed, dispatch_uid="accounts.security.login_failed")
def record_login_failed(sender, credentials: dict, request=None, **kwargs) -> None:
    """A failed password login: who was tried, and the org that person belongs to (if one)."""
    identifier = _login_identifier(credentials or {})
    try:
        user, org = failed_login_subject(identifier=identifier)
        security_event_record(
            kind=SecurityEvent.Kind.LOGIN_FAILED,
            org=org,
            user=user,
            identifier=identifier,
        )
    except Exception:  # recording must never turn a failed login into a server error
        logger.exception("could not record a failed login")


def _resolved_user(request):
    """The request's user without triggering authentication again.

    On a DRF request the authenticators already ran before any permission check (their result is
    ``_user``); on a plain Django request ``user`` may be an unevaluated lazy object, which is
    only read if it was evaluated already.
    """
    user = request.__dict__.get("_user")  # DRF Request
    if user is None:
        user = request.__dict__.get("user")
        user = getattr(user, "_wrapped", user)
    return user if getattr(user, "is_authenticated", False) is True else None


def record_permission_denied(request, exc: Exception, status: int, code: str) -> None:
    """Error observer: a 403 that denied an authenticated action becomes a PERMISSION_DENIED event."""
    if status != 403 or code not in DENIAL_CODES or request is None:
        return
    user = _resolved_user(request)
    api_key = getattr(request, "api_key", None)
    details: dict = {
        "code": code,
        "method": getattr(request, "method", ""),
        "path": getattr(request, "path", ""),
    }
    for extra in ("required_role", "required_scope"):
        value = (getattr(exc, "details", None) or {}).get(extra)
        if value:
            details[extra] = value
    if api_key is not None:
        identifier = api_key.public_id
    else:
        identifier = user.email if user is not None else ""
    security_event_record(
        kind=SecurityEvent.Kind.PERMISSION_DENIED,
        org=getattr(request, "org", None),
        user=user,
        api_key_id=api_key.pk if api_key is not None else None,
        identifier=identifier,
        details=details,
    )


register_error_observer(record_permission_denied)
