"""Reads of `accounts`, one module per area; every query is scoped by the caller's org or user."""

from .auth import api_key_for_auth, api_key_for_auth_counting, membership_for_request

__all__ = ["api_key_for_auth", "api_key_for_auth_counting", "membership_for_request"]
