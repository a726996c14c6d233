"""Encryption at rest for secrets the platform must read back (provider keys, webhook secrets,
MCP credentials): Fernet under keys from ``SECRET_ENCRYPTION_KEYS``.

The setting is a comma list: the first key encrypts, every key decrypts, so a new key is added in
front, ``manage.py rotate_encryption_keys`` re-encrypts every stored value under it, and the old
key is dropped afterwards. Without the setting (embedded default) one key is generated into
``var/encryption_keys`` on first use.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models


class DecryptionError(Exception):
    """A stored value could not be decrypted with any configured key."""


@cache
def _key_file_keys() -> tuple[str, ...]:
    """Keys from ``var/encryption_keys``, generating the file once. The key is written to a
    temporary file and hard-linked into place, so two processes starting together agree on one
    complete key (the loser of the race reads the winner's)."""
    path = settings.VAR_DIR / "encryption_keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".encryption_keys.")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(Fernet.generate_key().decode())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return tuple(k.strip() for k in path.read_text().split(",") if k.strip())


def _configured_keys() -> tuple[str, ...]:
    raw = settings.SECRET_ENCRYPTION_KEYS
    keys = [k.strip() for k in (raw.split(",") if isinstance(raw, str) else raw) if k.strip()]
    return tuple(keys) if keys else _key_file_keys()


@cache
def _fernet_for(keys: tuple[str, ...]) -> MultiFernet:
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            fernets.append(Fernet(key.encode()))
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"SECRET_ENCRYPTION_KEYS entry {position} is not a Fernet key (32 url-safe base64 "
                "bytes; make one with cryptography.fernet.Fernet.generate_key())."
            ) from exc
    if not fernets:
        raise ImproperlyConfigured("No encryption key: set SECRET_ENCRYPTION_KEYS.")
    return MultiFernet(fernets)


def _fernet() -> MultiFernet:
    # Keyed by the configured keys, so a changed setting (tests, rotation) takes effect at once.
    return _fernet_for(_configured_keys())


def reset_keys() -> None:
    """Forget the cached keys (the key file may have changed underneath)."""
    _key_file_keys.cache_clear()
    _fernet_for.cache_clear()


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


def needs_rotation(token: str) -> bool:
    """Whether ``token`` was made under an older key (the newest key cannot decrypt it)."""
    if not token:
        return False
    try:
        Fernet(_configured_keys()[0].encode()).decrypt(token.encode())
    except InvalidToken:
        return True
    return False


def mask(secret: str) -> str:
    """What reads show of a secret: its first three and last four characters, ``sk-…abcd``.

    Short secrets show less, so the mask never reveals most of a secret: under 16 characters only
    the last two, under 8 nothing.
    """
    if not secret:
        return ""
    if len(secret) < 8:
        return "…"
    if len(secret) < 16:
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
