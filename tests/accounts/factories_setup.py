"""Helpers shared by the setup, signup, allauth, me and bootstrap tests."""

from __future__ import annotations

import itertools
import json
import uuid

from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiKey, Invite, Organization, PlatformSettings, Role, User
from tests.factories import UserFactory

PASSWORD = "pw-Secret-123"  # what UserFactory sets
_ips = itertools.count(1)


def unique_email(prefix: str = "person") -> str:
    """A fresh address per test: allauth's rate limits are kept per address in a shared cache."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def unique_ip() -> str:
    """A fresh client IP per browser: allauth's per-IP limits must not leak between tests."""
    n = next(_ips) + uuid.uuid4().int % 50000
    return f"10.{(n >> 16) % 256}.{(n >> 8) % 256}.{n % 256 or 1}"


def set_signup_mode(mode: str) -> PlatformSettings:
    row, _ = PlatformSettings.objects.update_or_create(pk=1, defaults={"signup_mode": mode})
    return row


def staff_user(**fields) -> User:
    return UserFactory(is_staff=True, **fields)


def session_client(user: User) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def make_key(*, org: Organization, user: User, kind: str = ApiKey.Kind.PERSONAL, **kwargs) -> str:
    from accounts.services.keys import api_key_create

    _key, raw = api_key_create(org=org, actor=user, name=f"test {kind}", kind=kind, **kwargs)
    return raw


def key_client(raw_key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


def make_invite(
    *, org: Organization | None, email: str, role: str = Role.MEMBER, invited_by=None
) -> tuple[Invite, str]:
    from accounts.services.invites import invite_create

    return invite_create(org=org, email=email, role=role, invited_by=invited_by)


class Browser:
    """A browser on allauth's headless API: its own IP, cookies and the CSRF token echoed back."""

    base = "/_allauth/browser/v1"

    def __init__(self) -> None:
        self.client = Client(enforce_csrf_checks=True, REMOTE_ADDR=unique_ip(), HTTP_USER_AGENT="pytest")
        config = self.client.get(f"{self.base}/config")
        assert config.status_code == 200, config.content

    @property
    def csrf(self) -> str:
        return self.client.cookies["csrftoken"].value

    def url(self, path: str) -> str:
        """``/auth/login`` → the headless URL; platform paths (``/api/…``) pass through."""
        return path if path.startswith(("/api/", "/_allauth/", "/accounts/")) else f"{self.base}{path}"

    def _send(self, method: str, path: str, data=None):
        return getattr(self.client, method)(
            self.url(path),
            data=json.dumps(data) if data is not None else "",
            content_type="application/json",
            HTTP_X_CSRFTOKEN=self.csrf,
        )

    def get(self, path: str, **query):
        return self.client.get(self.url(path), query)

    def post(self, path: str, data=None):
        return self._send("post", path, data if data is not None else {})

    def put(self, path: str, data=None):
        return self._send("put", path, data if data is not None else {})

    def delete(self, path: str, data=None):
        return self._send("delete", path, data)

    def set_session(self, **values) -> None:
        session = self.client.session
        for key, value in values.items():
            session[key] = value
        session.save()
