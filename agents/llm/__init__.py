"""The LLM layer of the platform: every LLM call goes through the choke point exported here.

Other apps call only these names: ``achat`` / ``chat`` / ``astream`` for completions, ``aembed``
for embeddings, ``atranscribe`` / ``aspeech`` (sync: ``transcribe`` / ``speech``) for audio,
``resolve_providers`` for the BYOK order, ``alist_models`` / ``averify`` for provider checks (with
``provider_resolved(row)`` / ``personal_resolved(config)`` to turn a stored row into their input),
``request_sent_signal`` / ``until_request_sent`` for a caller that starts a streamed call in a task
and waits for its request to leave (``after_request_sent`` for the run's own work, ``after_first_event``
for work held back until its first event is out; ``agents.llm.sent``),
and the errors. The SDK client factory
(``agents.llm.client``) is an implementation detail.
"""

from agents.llm.chokepoint import (
    LLMChunk,
    LLMResult,
    achat,
    aclose_clients,
    aembed,
    alist_models,
    astream,
    averify,
    chat,
    on_short_lived_loop,
)
from agents.llm.client import ResolvedProvider
from agents.llm.errors import NoProviderError, ProviderAuthError, ProviderBadRequest, ProviderUnavailable
from agents.llm.media import SPEECH_FORMATS, MediaResult, aspeech, atranscribe, speech, transcribe
from agents.llm.resolve import clear_cache as clear_resolution_cache
from agents.llm.resolve import personal_resolved, provider_resolved, resolve_providers
from agents.llm.sent import after_first_event, after_request_sent, request_sent_signal, until_request_sent

__all__ = [
    "LLMChunk",
    "LLMResult",
    "MediaResult",
    "NoProviderError",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderUnavailable",
    "ResolvedProvider",
    "SPEECH_FORMATS",
    "achat",
    "aclose_clients",
    "aembed",
    "after_first_event",
    "after_request_sent",
    "alist_models",
    "aspeech",
    "astream",
    "atranscribe",
    "averify",
    "chat",
    "clear_resolution_cache",
    "on_short_lived_loop",
    "personal_resolved",
    "provider_resolved",
    "request_sent_signal",
    "resolve_providers",
    "speech",
    "transcribe",
    "until_request_sent",
]
