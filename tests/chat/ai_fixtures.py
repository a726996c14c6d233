"""Fixtures and sample files of the /api/v1/ai tests (imported by tests/chat/test_ai_*.py).

The fake upstream "hears" the text after ``SAY:`` in an audio file, so a sample's transcript is
known; its ``json`` / ``json-*`` models answer JSON (``FAKE-JSON:`` in the prompt scripts it).
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents import registries
from agents.llm import chokepoint, clear_resolution_cache
from tests.chat.conftest import make_provider

# The first bytes of each accepted audio format, then what the fake upstream will hear.
AUDIO_HEADS = {
    "mp3": (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg", "mp3"),
    "mp3-frame": (b"\xff\xfb\x90\x64\x00\x00", "audio/mpeg", "mp3"),
    "wav": (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav", "wav"),
    "ogg": (b"OggS\x00\x02\x00\x00", "audio/ogg", "ogg"),
    "webm": (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "audio/webm;codecs=opus", "webm"),
    "flac": (b"fLaC\x00\x00\x00\x22", "audio/flac", "flac"),
    "m4a": (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "audio/x-m4a", "m4a"),
}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64)
WEBP = b"RIFF\x40\x00\x00\x00WEBPVP8 " + bytes(64)
GIF = b"GIF89a" + bytes(64)


def audio(text: str = "hello world", kind: str = "mp3") -> bytes:
    head = AUDIO_HEADS[kind][0]
    return head + b"SAY:" + text.encode() + b"\x00" + bytes(range(256))


def upload(name: str, data: bytes, content_type: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


@pytest.fixture(autouse=True)
def _fresh_llm(settings, monkeypatch):
    """No platform key, fast retries that never sleep, no cached provider resolution."""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.LLM_RETRY_BASE_SECONDS = 0.001
    settings.LLM_MAX_RETRIES = 1

    async def no_sleep(seconds):
        return None

    monkeypatch.setattr(chokepoint, "_sleep", no_sleep)
    clear_resolution_cache()
    yield
    clear_resolution_cache()


@pytest.fixture
def provider(org, fake_upstream, allow_loopback):
    """The org's provider on the fake upstream."""
    return make_provider(org, fake_upstream)


@pytest.fixture
def usage_events():
    """Usage events of the choke point during one test."""
    received: list[dict] = []
    registries.register_usage_listener(received.append)
    yield received
    registries._usage_listeners.remove(received.append)


@pytest.fixture
def guard_log():
    """Calls of a registered LLM guard: ("before", call) and ("after", call, usage, reservation)."""
    log: list[tuple] = []

    def before(call):
        log.append(("before", call))
        return "reservation"

    def after(call, usage, reservation):
        log.append(("after", call, usage, reservation))

    registries.register_llm_guard(before, after)
    yield log
    registries._guards.remove((before, after))
