"""Encryption at rest for secrets the platform must read back (provider keys, webhook secrets,
MCP credentials): Fernet under keys from ``SECRET_ENCRYPTION_KEYS``.

The setting is a comma list: the first key encrypts, every key decrypts, so a new key is added in
front, ``manage.py rotate_encryption_keys`` re-encrypts every stored value under it, and the old
key is dropped afterwards. Without the setting (embedded default) one key is generated into
``var/encryption_keys`` on first use.
"""

from __future__ import annotations

from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured key."""


def _configured_keys() -> list[str]:
    keys = [k.strip() for k in settings.SECRET_ENCRYPTION_KEYS if k.strip()]
    if keys:
        return keys
    path = settings.VAR_DIR / "encryption_keys"
    if not path.exists():
        path.write_text(Fernet.generate_key().decode())
        path.chmod(0o600)
    return [k.strip() for k in path.read_text().split(",") if k.strip()]


@cache
def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in _configured_keys()])


def reset_keys() -> None:
    """Forget the cached keys (tests and the rotation command change the setting)."""
    _fernet.cache_clear()


def encrypt(plaintext: str) -> str:
    """A Fernet token of ``plaintext`` under the newest key ('' stays '')."""
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    """The plaintext of a token made under any configured key."""
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError("stored secret cannot be decrypted with SECRET_ENCRYPTION_KEYS") from exc


def rotate(token: str) -> str:
    """The same secret re-encrypted under the newest key."""
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken as exc:
        raise DecryptionError("stored secret cannot be decrypted with SECRET_ENCRYPTION_KEYS") from exc


def mask(secret: str) -> str:
    """What reads show of a secret: its first three and last four characters, ``sk-…abcd``."""
    if not secret:
        return ""
    if len(secret) <= 8:
        return "…" + secret[-2:]
    return f"{secret[:3]}…{secret[-4:]}"


class EncryptedTextField(models.TextField):
    """A text column that holds a Fernet token; Python code sees the plaintext.

    The raw column never holds the secret. ``rotate_encryption_keys`` finds every field of this
    class to re-encrypt it.
    """

    def from_db_value(self, value, expression, connection):
        if value is None or value == "":
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value is None or value == "":
            return value
        return encrypt(value)
