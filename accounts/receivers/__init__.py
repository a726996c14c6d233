"""Receivers that observe other parts of the stack (allauth, Django auth, the error handler)
and hand over to services. Imported once from ``AccountsConfig.ready()``."""

from . import auth_cache, security, signup  # noqa: F401
