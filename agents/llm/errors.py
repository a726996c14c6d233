"""Platform errors of the LLM choke point: what callers see when an upstream provider fails.

Upstream failures never leak as SDK exceptions; they are mapped to these, which the one exception
handler renders as the error envelope (and which the chat stream sends as its ``error`` event).
"""

from __future__ import annotations

from core.errors import ApplicationError


class ProviderUnavailable(ApplicationError):
    """Every candidate provider failed (down, overloaded, timing out), or a stream broke off."""

    status_code = 502
    code = "ERR_PROVIDER_UNAVAILABLE"
    message = "The language model provider is unavailable. Try again in a moment."


class ProviderAuthError(ApplicationError):
    """The provider refused the stored key (401/403): an admin must fix the key."""

    status_code = 424
    code = "ERR_PROVIDER_AUTH"
    message = "The language model provider refused the API key. Check the provider's key."


class NoProviderError(ApplicationError):
    """Neither the user, the agent, the org nor the platform has a provider configured."""

    status_code = 424
    code = "ERR_NO_PROVIDER"
    message = (
        "No language model provider is configured. An admin can add one with "
        "POST /api/v1/providers (and pick it in /api/v1/org/ai-config), or the operator can set "
        "OPENAI_API_KEY."
    )


class ProviderBadRequest(ApplicationError):
    """The provider rejected the request itself (400): retrying or failing over will not help."""

    status_code = 502
    code = "ERR_PROVIDER_BAD_REQUEST"
    message = "The language model provider rejected the request."
