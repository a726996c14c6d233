"""DRF authentication: API keys (``Authorization: Bearer`` or ``X-Agent-Token``) and sessions.

Each class also resolves the tenant: ``request.org`` and ``request.role`` (the effective role,
which for a personal key is never above its user's current role), plus ``request.api_key``.
Failures with a key are recorded as security events.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.core.cache import cache
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts import keys
from accounts.models import ApiKey, Role, SecurityEvent
from accounts.selectors import api_key_for_auth_counting, membership_for_request
from accounts.services.audit import security_event_record
from core import context, throttling

# last_used_at is written at most this often per key, so a busy key costs no extra write.
LAST_USED_RESOLUTION = timedelta(seconds=60)
LAST_USED_MEMO_SIZE = 10_000  # keys remembered per process before the memo starts over


class KeyAuthenticationFailed(exceptions.AuthenticationFailed):
    """A presented key was refused; ``error_code`` names why."""

    def __init__(self, detail: str = "Invalid API key.", code: str | None = None) -> None:
        super().__init__(detail)
        self.error_code = code or "ERR_AUTHENTICATION_FAILED"


def _set_tenant(request, *, org, role, api_key=None) -> None:
    """Expose the tenant on the DRF request and the Django request below it (for logging)."""
    for target in (request, getattr(request, "_request", None)):
        if target is not None:
            target.org = org
            target.role = role
            target.api_key = api_key


def effective_role(key: ApiKey) -> str | None:
    """The role a key acts with: a personal key is capped by its user's current membership."""
    if key.kind == ApiKey.Kind.PERSONAL:
        member_role = getattr(key, "member_role", None)
        if member_role is None:
            return None
        if key.role and Role.rank(key.role) < Role.rank(member_role):
            return key.role
        return member_role
    return key.role or Role.MEMBER


def _reject(kind: str, message: str, *, key: ApiKey | None = None, identifier: str = "", code=None):
    security_event_record(
        kind=kind,
        org=key.org if key is not None else None,
        user=key.user if key is not None else None,
        api_key_id=key.pk if key is not None else None,
        identifier=identifier or (key.public_id if key is not None else ""),
    )
    raise KeyAuthenticationFailed(message, code=code)


def key_refusal(parsed: keys.ParsedKey, key: ApiKey | None, now) -> tuple[str, str, str | None] | None:
    """Why the looked-up ``key`` may not be used with the presented ``parsed`` key, as (security
    event kind, message, error code); None when it may. Reads nothing: the row has what it needs."""
    if key is None or key.kind != parsed.kind:
        return SecurityEvent.Kind.KEY_INVALID, "Invalid API key.", None
    current = keys.secret_matches(parsed.secret, key.secret_hash)
    in_grace = (
        not current
        and key.previous_secret_expires_at is not None
        and key.previous_secret_expires_at > now
        and keys.secret_matches(parsed.secret, key.previous_secret_hash)
    )
    if not (current or in_grace):
        return SecurityEvent.Kind.KEY_INVALID, "Invalid API key.", None
    if key.revoked_at is not None or not key.is_active:
        return SecurityEvent.Kind.KEY_REVOKED, "This API key was revoked.", "ERR_KEY_REVOKED"
    if key.expires_at is not None and key.expires_at <= now:
        return SecurityEvent.Kind.KEY_EXPIRED, "This API key has expired.", "ERR_KEY_EXPIRED"
    if key.user is not None and not key.user.is_active:
        return SecurityEvent.Kind.KEY_REVOKED, "The key's user is deactivated.", None
    if key.org.deletion_requested_at is not None:
        return SecurityEvent.Kind.KEY_REVOKED, "The key's organisation is being deleted.", None
    if effective_role(key) is None:
        return (
            SecurityEvent.Kind.KEY_REVOKED,
            "The key's user is no longer a member of its organisation.",
            "ERR_KEY_REVOKED",
        )
    return None


def authenticate_key(raw: str, *, request=None) -> ApiKey:
    """Check a presented key; return its row (with ``member_role``) or raise a 401 error. With the
    DRF ``request``, its rate-limit count is taken in the same cache round trip as the lookup
    (unless it was counted already, on the event loop: ``accounts.loop_auth``)."""
    parsed = keys.parse_key(raw)
    if parsed is None:
        _reject(SecurityEvent.Kind.KEY_INVALID, "Invalid API key.", identifier=raw[:16])
    counter = throttling.key_counter(request, parsed.public_id) if request is not None else None
    if counter is not None and throttling.already_counted(request, counter):
        counter = None
    key, count = api_key_for_auth_counting(public_id=parsed.public_id, counter=counter)
    if count is not None:  # there was a counter to count
        throttling.remember_count(request, counter, count)
    now = timezone.now()
    refusal = key_refusal(parsed, key, now)
    if refusal is not None:
        kind, message, code = refusal
        if key is None or key.kind != parsed.kind:
            _reject(kind, message, identifier=parsed.public_id, code=code)
        _reject(kind, message, key=key, code=code)
    _stamp_last_used(key, now)
    return key


# When this process last asked the cache about each key's last_used_at (monotonic seconds).
_last_used_asked: dict[Any, float] = {}


def claim_last_used_stamp(key: ApiKey) -> bool:
    """Whether this request asks the cache about ``key``'s ``last_used_at`` (at most once a minute
    per key in this process; the first request to ask claims it, see :func:`_stamp_last_used`)."""
    period = LAST_USED_RESOLUTION.total_seconds()
    asked_at = _last_used_asked.get(key.pk)
    moment = time.monotonic()
    if asked_at is not None and moment - asked_at < period:
        return False
    if len(_last_used_asked) > LAST_USED_MEMO_SIZE:
        _last_used_asked.clear()
    _last_used_asked[key.pk] = moment
    return True


def write_last_used(key_id: Any, now, ip: str | None) -> None:
    """Stamp the key's last use, if this process wins the minute's ``cache.add`` (see
    :func:`_stamp_last_used`)."""
    if cache.add(f"auth:last-used:{key_id}", 1, timeout=LAST_USED_RESOLUTION.total_seconds()):
        ApiKey.objects.filter(pk=key_id).update(last_used_at=now, last_used_ip=ip)


def _stamp_last_used(key: ApiKey, now) -> None:
    """At most one ``last_used_at`` write a minute per key, whichever process wins the cache.add.

    A process asks the cache at most once a minute per key too: the answer cannot change sooner,
    and the question was a Redis round trip on every request of a busy key. An UPDATE does not
    send post_save, so it leaves cached lookups alone.
    """
    if claim_last_used_stamp(key):
        write_last_used(key.pk, now, context.current().ip)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <key>``, or ``X-Agent-Token: <agent key>``."""

    def authenticate(self, request):
        header = request.headers.get("Authorization", "")
        scheme, _, raw = header.partition(" ")
        agent_token = request.headers.get("X-Agent-Token")
        if scheme.lower() == "bearer" and raw.strip():
            key = authenticate_key(raw.strip(), request=request)
        elif agent_token:
            key = authenticate_key(agent_token.strip(), request=request)
            if key.kind != ApiKey.Kind.AGENT:
                raise KeyAuthenticationFailed("X-Agent-Token takes an agent key.")
        else:
            return None
        requested_org = request.headers.get("X-Org-Id")
        if requested_org and requested_org != str(key.org_id):
            raise exceptions.NotFound("Organisation not found.")
        context.note_api_key(key.pk)
        _set_tenant(request, org=key.org, role=effective_role(key), api_key=key)
        return key.user, key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def bind_session_tenant(request, user) -> None:
    """Tenant of a session: ``X-Org-Id`` (must be a member), else the active org, else the first."""
    org_id = request.headers.get("X-Org-Id") or None
    try:
        membership = membership_for_request(user=user, org_id=org_id)
    except DjangoValidationError as exc:  # a malformed X-Org-Id
        raise exceptions.NotFound("Organisation not found.") from exc
    if org_id and membership is None:
        raise exceptions.NotFound("Organisation not found.")
    _set_tenant(
        request,
        org=membership.org if membership else None,
        role=membership.role if membership else None,
    )


class CsrfFailed(exceptions.PermissionDenied):
    """A session write without a valid CSRF token."""

    error_code = "ERR_CSRF_FAILED"


class SessionAuthentication(authentication.SessionAuthentication):
    """Browser sessions; writes need the CSRF token (``X-CSRFToken``)."""

    def enforce_csrf(self, request) -> None:
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            raise CsrfFailed(f"{exc.detail} Echo the csrftoken cookie in the X-CSRFToken header.") from exc

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is not None:
            bind_session_tenant(request, result[0])
        return result

    def authenticate_header(self, request) -> str:
        return 'Session realm="api"'
