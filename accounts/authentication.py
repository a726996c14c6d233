"""DRF authentication classes; each one also resolves the tenant of the request."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import authentication, exceptions

from accounts.selectors import membership_for_request


def bind_tenant(request, user) -> None:
    """Set ``request.org`` and ``request.role`` (also on the Django request, for logging)."""
    org_id = request.headers.get("X-Org-Id") or None
    try:
        membership = membership_for_request(user=user, org_id=org_id)
    except DjangoValidationError as exc:  # a malformed X-Org-Id
        raise exceptions.NotFound("Organisation not found.") from exc
    if org_id and membership is None:
        raise exceptions.NotFound("Organisation not found.")
    org = membership.org if membership else None
    role = membership.role if membership else None
    for target in (request, getattr(request, "_request", None)):
        if target is not None:
            target.org = org
            target.role = role


class SessionAuthentication(authentication.SessionAuthentication):
    """Browser sessions (CSRF enforced on writes); answers 401 rather than 403 when absent."""

    def authenticate(self, request):
        result = super().authenticate(request)
        if result is not None:
            bind_tenant(request, result[0])
        return result

    def authenticate_header(self, request) -> str:
        return 'Session realm="api"'
