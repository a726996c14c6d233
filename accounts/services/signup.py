"""First-run setup, the signup policy, the waitlist and what happens after a signup."""

from __future__ import annotations


def signup_allowed(*, invite_token: str | None) -> bool:
    """Whether a new account may be created now (filled in by the signup work)."""
    return False
