"""Speech through the LLM choke point: transcription (speech to text) and speech synthesis (text to
speech).

``atranscribe`` and ``aspeech`` are choke-point calls like ``achat``: the same BYOK resolution
(``resolve.aresolve_candidates``), the same LLM guards before and after (billing reserves and
settles), the same retries with backoff, ``Retry-After`` and failover, the same error mapping, the
same provider health records and exactly one usage event per call. They differ only in the
upstream request (``/audio/transcriptions`` multipart, ``/audio/speech`` returning bytes), which
is all ``_MediaCall`` overrides of the choke point's ``_Call``.

Usage: a transcription that reports tokens is counted in tokens; one that reports seconds (whisper)
or nothing is estimated (``usage_estimated``): the audio from its size (about 1,600 bytes a token
for compressed speech), the text from its length. Speech is estimated from the input text. The
usage event carries ``audio_seconds`` (when the provider said) and ``characters`` (speech input)
besides the usual fields, for billing by duration or characters.

Settings: ``LLM_TRANSCRIBE_MODEL`` (``whisper-1``) and ``LLM_TTS_MODEL`` (``tts-1``) are used when
the caller names no model (the org's chat model would not speak audio); the voice defaults to
``alloy``.
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import openai
from asgiref.sync import async_to_sync
from django.conf import settings

from agents.llm.chokepoint import (
    LLMResult,
    _Accumulator,
    _Call,
    _estimate_tokens,
    _Failure,
    aclose_clients,
    on_short_lived_loop,
)
from agents.llm.client import ResolvedProvider
from agents.llm.errors import ProviderUnavailable

DEFAULT_TRANSCRIBE_MODEL = "whisper-1"
DEFAULT_TTS_MODEL = "tts-1"
DEFAULT_VOICE = "alloy"
# Bytes of compressed speech per prompt token, for the estimate the guards reserve against.
AUDIO_BYTES_PER_TOKEN = 1600

# Output formats of speech synthesis and the Content-Type each is served with.
SPEECH_FORMATS: dict[str, str] = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "opus": "audio/ogg",
    "flac": "audio/flac",
    "aac": "audio/aac",
}


@dataclass
class MediaResult:
    """The outcome of one media call: the transcript or the audio, tokens, and who served it."""

    model: str
    provider_id: Any
    provider_source: str
    provider_type: str
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    latency_ms: float
    text: str = ""  # the transcript (transcription)
    audio: bytes = b""  # the synthesised audio (speech)
    content_type: str = ""  # of ``audio``
    duration_seconds: float | None = None  # of the transcribed audio, when the provider said
    language: str = ""


class _MediaCall(_Call):
    """A choke-point call whose upstream request is an audio endpoint instead of a completion."""

    def __init__(self, *, org: Any, user: Any, model: str, purpose: str, prompt_estimate: int) -> None:
        super().__init__(
            org=org, messages=[], user=user, agent=None, model=model, tools=None,
            temperature=None, max_tokens=None, purpose=purpose, stream=False,
        )  # fmt: skip
        self.prompt_estimate = prompt_estimate
        self.audio_seconds: float | None = None
        self.characters: int | None = None

    def event(self, provider: ResolvedProvider, usage: dict, error_code: str | None) -> dict:
        event = super().event(provider, usage, error_code)
        if self.audio_seconds is not None:
            event["audio_seconds"] = self.audio_seconds
        if self.characters is not None:
            event["characters"] = self.characters
        return event

    def result(self, llm: LLMResult, **fields: Any) -> MediaResult:
        return MediaResult(
            model=llm.model,
            provider_id=llm.provider_id,
            provider_source=llm.provider_source,
            provider_type=llm.provider_type,
            prompt_tokens=llm.prompt_tokens,
            completion_tokens=llm.completion_tokens,
            usage_estimated=llm.usage_estimated,
            latency_ms=llm.latency_ms,
            **fields,
        )

    async def complete(self) -> LLMResult:
        """Run the call to its ``done`` chunk (retries, failover, guards and the event included)."""
        async with aclosing(self.run()) as chunks:
            async for chunk in chunks:
                if chunk.type == "done" and chunk.result is not None:
                    return chunk.result
        raise ProviderUnavailable()  # unreachable: run() ends with done or raises


class _TranscribeCall(_MediaCall):
    def __init__(
        self, *, org: Any, user: Any, model: str, audio: bytes, filename: str, content_type: str,
        language: str | None,
    ) -> None:  # fmt: skip
        super().__init__(
            org=org, user=user, model=model, purpose="transcription",
            prompt_estimate=max(1, len(audio) // AUDIO_BYTES_PER_TOKEN),
        )  # fmt: skip
        self.audio = audio
        self.filename = filename or "audio"
        self.content_type = content_type
        self.language = language or ""

    def params(self, provider: ResolvedProvider) -> dict:
        params: dict[str, Any] = {
            "model": provider.model,
            "file": (self.filename, self.audio, self.content_type or "application/octet-stream"),
            "response_format": "json",
        }
        if self.language:
            params["language"] = self.language
        return params

    async def request(self, client: openai.AsyncOpenAI, params: dict, acc: _Accumulator) -> None:
        answer = await client.audio.transcriptions.create(**params)
        text = getattr(answer, "text", None)
        if not isinstance(text, str):
            raise _Failure("retry", "The provider's transcription had no text.")
        acc.content = [text]
        acc.finish_reason = "stop"
        usage = getattr(answer, "usage", None)
        kind = getattr(usage, "type", None)
        if kind == "tokens":
            acc.usage = SimpleNamespace(
                prompt_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            )
        elif kind == "duration":
            seconds = getattr(usage, "seconds", None)
            self.audio_seconds = float(seconds) if seconds is not None else None


class _SpeechCall(_MediaCall):
    def __init__(self, *, org: Any, user: Any, model: str, text: str, voice: str, format: str) -> None:
        super().__init__(
            org=org, user=user, model=model, purpose="speech", prompt_estimate=_estimate_tokens(text)
        )
        self.text = text
        self.voice = voice
        self.format = format
        self.characters = len(text)
        self.audio = b""

    def params(self, provider: ResolvedProvider) -> dict:
        return {
            "model": provider.model,
            "input": self.text,
            "voice": self.voice,
            "response_format": self.format,
        }

    async def request(self, client: openai.AsyncOpenAI, params: dict, acc: _Accumulator) -> None:
        answer = await client.audio.speech.create(**params)
        audio = answer.content
        if not audio:
            raise _Failure("retry", "The provider returned no audio.")
        self.audio = audio
        acc.finish_reason = "stop"


async def atranscribe(
    *,
    org: Any,
    audio: bytes,
    filename: str,
    content_type: str,
    user: Any = None,
    model: str | None = None,
    language: str | None = None,
) -> MediaResult:
    """Transcribe ``audio`` (``result.text``) through the choke point; see the module docstring."""
    call = _TranscribeCall(
        org=org, user=user,
        model=model or getattr(settings, "LLM_TRANSCRIBE_MODEL", "") or DEFAULT_TRANSCRIBE_MODEL,
        audio=audio, filename=filename, content_type=content_type, language=language,
    )  # fmt: skip
    llm = await call.complete()
    return call.result(llm, text=llm.content, duration_seconds=call.audio_seconds, language=call.language)


async def aspeech(
    *,
    org: Any,
    text: str,
    user: Any = None,
    voice: str | None = None,
    model: str | None = None,
    format: str = "mp3",  # noqa: A002 - the upstream's own name for it
) -> MediaResult:
    """Synthesise ``text`` as audio (``result.audio``, ``result.content_type``) through the choke
    point. ``format`` is one of ``SPEECH_FORMATS``."""
    if format not in SPEECH_FORMATS:
        raise ValueError(f"unknown speech format {format!r}")
    call = _SpeechCall(
        org=org, user=user,
        model=model or getattr(settings, "LLM_TTS_MODEL", "") or DEFAULT_TTS_MODEL,
        text=text, voice=voice or DEFAULT_VOICE, format=format,
    )  # fmt: skip
    llm = await call.complete()
    return call.result(llm, audio=call.audio, content_type=SPEECH_FORMATS[format])


def _sync(fn: Any, kwargs: dict[str, Any]) -> MediaResult:
    async def run() -> MediaResult:
        try:
            return await fn(**kwargs)
        finally:
            if on_short_lived_loop():  # never close the clients of a server's own loop
                await aclose_clients()

    return async_to_sync(run)()


def transcribe(**kwargs: Any) -> MediaResult:
    """Sync wrapper of ``atranscribe`` for views and Celery tasks (same keyword arguments)."""
    return _sync(atranscribe, kwargs)


def speech(**kwargs: Any) -> MediaResult:
    """Sync wrapper of ``aspeech`` for views and Celery tasks (same keyword arguments)."""
    return _sync(aspeech, kwargs)
