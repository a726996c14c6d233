"""API key material: ``<kind prefix>_<public id>_<secret>``, generated, parsed and hashed.

The public id finds the row through a unique index; only a SHA-256 of the secret is stored, and it
is compared in constant time. Both parts are base62, so the underscores always split cleanly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KIND_PREFIXES = {"personal": "pat", "service": "svc", "agent": "agt"}
PREFIX_KINDS = {prefix: kind for kind, prefix in KIND_PREFIXES.items()}
_ALPHABET = string.ascii_letters + string.digits
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 32  # 32 base62 characters: about 190 bits


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_public_id() -> str:
    return _random(PUBLIC_ID_LENGTH)


def new_secret() -> str:
    return _random(SECRET_LENGTH)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    if not stored_hash:
        return False
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def format_key(kind: str, public_id: str, secret: str) -> str:
    return f"{KIND_PREFIXES[kind]}_{public_id}_{secret}"


@dataclass(frozen=True)
class ParsedKey:
    kind: str
    public_id: str
    secret: str


def parse_key(raw: str) -> ParsedKey | None:
    """Split a presented key; None when it cannot be one of ours."""
    parts = raw.strip().split("_")
    if len(parts) != 3:
        return None
    prefix, public_id, secret = parts
    kind = PREFIX_KINDS.get(prefix)
    if kind is None or len(public_id) != PUBLIC_ID_LENGTH or len(secret) != SECRET_LENGTH:
        return None
    if not (public_id.isalnum() and secret.isalnum() and public_id.isascii() and secret.isascii()):
        return None
    return ParsedKey(kind=kind, public_id=public_id, secret=secret)
