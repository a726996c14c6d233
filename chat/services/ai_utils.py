"""Speech and one-shot utilities behind /api/v1/ai: transcription (stored as a Transcript), speech
synthesis and a one-shot completion. Image extraction lives in ``chat.services.ai_extract``.

Every model call goes through the LLM choke point (``agents.llm``), so BYOK resolution, guards
(spend caps), retries, failover and the one usage event per call apply here as everywhere else.
Uploads are checked twice before anything is sent upstream: the declared Content-Type must be one
of the accepted types (or say nothing, ``application/octet-stream``) and the first bytes must be
those of a supported format; both must agree. A text file named ``.mp3`` answers 415.

No transaction is held open across a provider call: the transcript row is written in its own
transaction once the text is back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from agents import llm
from agents.models import Agent
from agents.runtime.loop import run_agent
from chat.models import Transcript
from core.errors import ApplicationError, ValidationError

MAX_AUDIO_BYTES = 25 * 1024 * 1024
MAX_TTS_CHARS = 500
GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


class UnsupportedMediaType(ApplicationError):
    """The upload is not (or does not look like) one of the accepted formats."""

    status_code = 415
    code = "ERR_UNSUPPORTED_MEDIA_TYPE"
    message = "The file is not in a supported format."


class MediaTypeMismatch(UnsupportedMediaType):
    """The declared Content-Type names one format, the bytes are another."""

    code = "ERR_MEDIA_TYPE_MISMATCH"


class UploadTooLarge(ApplicationError):
    status_code = 413
    code = "ERR_PAYLOAD_TOO_LARGE"
    message = "The file is too large."


@dataclass(frozen=True)
class MediaKind:
    """A format the utilities accept: its name, file extension, canonical and accepted types."""

    name: str
    extension: str
    content_type: str
    declared: frozenset[str]


def _kinds(*rows: tuple[str, str, str, str]) -> dict[str, MediaKind]:
    """``(name, extension, canonical type, "other accepted types")`` rows as a lookup by name."""
    return {
        name: MediaKind(name, extension, content_type, frozenset({content_type, *others.split()}))
        for name, extension, content_type, others in rows
    }


AUDIO_KINDS = _kinds(
    ("mp3", "mp3", "audio/mpeg", "audio/mp3 audio/mpeg3 audio/x-mpeg-3 audio/x-mp3 audio/mpga"),
    ("wav", "wav", "audio/wav", "audio/x-wav audio/wave audio/vnd.wave"),
    ("ogg", "ogg", "audio/ogg", "audio/opus application/ogg audio/x-ogg"),
    ("webm", "webm", "audio/webm", "video/webm audio/x-matroska video/x-matroska"),
    ("flac", "flac", "audio/flac", "audio/x-flac"),
    ("m4a", "m4a", "audio/mp4", "audio/m4a audio/x-m4a audio/aac video/mp4 audio/mp4a-latm"),
)
IMAGE_KINDS = _kinds(
    ("png", "png", "image/png", ""),
    ("jpeg", "jpg", "image/jpeg", "image/jpg image/pjpeg"),
    ("webp", "webp", "image/webp", ""),
    ("gif", "gif", "image/gif", ""),
)


_IMAGE_BRANDS = {b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis", b"crx "}


def sniff_audio(data: bytes) -> str | None:
    """The audio format the bytes start with (see ``AUDIO_KINDS``), or None."""
    head = data[:16]
    if head.startswith(b"ID3"):
        return "mp3"
    # An MPEG audio frame: 11 sync bits, then a layer that is not 00 (00 is AAC's ADTS).
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0:
        return "mp3"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head.startswith(b"fLaC"):
        return "flac"
    if head[4:8] == b"ftyp" and head[8:12] not in _IMAGE_BRANDS:  # ISO media, but not HEIF/AVIF pictures
        return "m4a"
    return None


def sniff_image(data: bytes) -> str | None:
    """The image format the bytes start with (see ``IMAGE_KINDS``), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    return None


def check_upload(
    *,
    data: bytes,
    declared_type: str,
    kinds: dict[str, MediaKind],
    sniff: Callable[[bytes], str | None],
    max_bytes: int,
    what: str,
    field: str,
) -> MediaKind:
    """The format of an upload, after checking its size, its declared type and its first bytes."""
    if not data:
        raise ValidationError(
            f"{field}: The {what} file is empty.", details={"fields": {field: ["The file is empty."]}}
        )
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"The {what} file is {len(data)} bytes; at most {max_bytes} are accepted.",
            details={"limit_bytes": max_bytes, "received_bytes": len(data)},
        )
    declared = (declared_type or "").split(";", 1)[0].strip().lower()
    accepted = sorted(kinds)
    declared_kind = next((k for k in kinds.values() if declared in k.declared), None)
    if declared not in GENERIC_TYPES and declared_kind is None:
        raise UnsupportedMediaType(
            f"The {what} file is declared as {declared!r}; accepted formats: {', '.join(accepted)}.",
            details={"declared_type": declared, "accepted": accepted},
        )
    detected = sniff(data)
    if detected is None:
        raise UnsupportedMediaType(
            f"The content of the file is not {what} in a supported format ({', '.join(accepted)}), "
            "whatever its name or declared type says.",
            details={"declared_type": declared, "accepted": accepted},
        )
    if declared_kind is not None and declared_kind.name != detected:
        raise MediaTypeMismatch(
            f"The file is declared as {declared} but its content is {detected}.",
            details={"declared_type": declared, "detected": detected},
        )
    return kinds[detected]


def usage_of(result: Any) -> dict[str, int]:
    """The ``usage`` object of an /ai answer."""
    prompt, completion = int(result.prompt_tokens or 0), int(result.completion_tokens or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- transcription ---------------------------------------------------------------------------------


def transcribe_audio(
    *,
    org: Organization,
    user: User,
    data: bytes,
    filename: str,
    declared_type: str,
    language: str | None = None,
    model: str | None = None,
) -> tuple[Transcript, llm.MediaResult]:
    """Check the audio, transcribe it through the choke point and store the transcript."""
    kind = check_upload(
        data=data, declared_type=declared_type, kinds=AUDIO_KINDS, sniff=sniff_audio,
        max_bytes=MAX_AUDIO_BYTES, what="audio", field="file",
    )  # fmt: skip
    # Providers tell formats apart by the file extension: send the one of the detected format.
    result = llm.transcribe(
        org=org, user=user, audio=data, filename=f"audio.{kind.extension}",
        content_type=kind.content_type, model=model or None, language=language or None,
    )  # fmt: skip
    transcript = transcript_create(
        org=org,
        user=user,
        filename=filename,
        content_type=kind.content_type,
        size_bytes=len(data),
        duration_seconds=result.duration_seconds,
        language=language or result.language,
        model=result.model,
        text=result.text,
    )
    return transcript, result


@transaction.atomic
def transcript_create(
    *,
    org: Organization,
    user: User,
    filename: str,
    content_type: str,
    size_bytes: int,
    text: str,
    model: str = "",
    language: str = "",
    duration_seconds: float | None = None,
) -> Transcript:
    """Store the text of one audio upload (the audio itself is not kept)."""
    transcript = Transcript(
        org=org,
        user=user,
        filename=(filename or "")[:255],
        content_type=content_type[:100],
        size_bytes=size_bytes,
        duration_seconds=duration_seconds,
        language=(language or "")[:16],
        model=(model or "")[:200],
        text=text,
    )
    transcript.full_clean()
    transcript.save()
    audit_record(
        org=org,
        actor=user,
        action="transcript.created",
        entity=transcript,
        after={"filename": transcript.filename, "size_bytes": size_bytes, "model": transcript.model},
    )
    return transcript


@transaction.atomic
def transcript_delete(*, transcript: Transcript, actor: User) -> None:
    """Delete one transcript."""
    audit_record(
        org=transcript.org,
        actor=actor,
        action="transcript.deleted",
        entity=transcript,
        before={"filename": transcript.filename, "size_bytes": transcript.size_bytes},
    )
    transcript.delete()


# --- speech ----------------------------------------------------------------------------------------


def synthesize_speech(
    *,
    org: Organization,
    user: User,
    text: str,
    voice: str | None = None,
    model: str | None = None,
    format: str = "mp3",  # noqa: A002 - the name clients send
) -> llm.MediaResult:
    """Text (at most 500 characters) to audio bytes through the choke point."""
    text = (text or "").strip()
    if not text:
        raise ValidationError("text: Give the text to speak.", details={"fields": {"text": ["Required."]}})
    if len(text) > MAX_TTS_CHARS:
        raise ValidationError(
            f"text: At most {MAX_TTS_CHARS} characters can be spoken at once.",
            details={"fields": {"text": [f"Ensure this field has no more than {MAX_TTS_CHARS} characters."]}},
        )
    if format not in llm.SPEECH_FORMATS:
        raise ValidationError(
            f"format: One of {', '.join(llm.SPEECH_FORMATS)}.",
            details={"fields": {"format": [f"One of {', '.join(llm.SPEECH_FORMATS)}."]}},
        )
    return llm.speech(org=org, user=user, text=text, voice=voice or None, model=model or None, format=format)


# --- one-shot completion ---------------------------------------------------------------------------


def execute_prompt(
    *,
    org: Organization,
    user: User,
    prompt: str,
    system: str = "",
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    response_format: dict | None = None,
) -> dict[str, Any]:
    """One completion with no conversation: ``{content, model, usage, finish_reason}``."""
    messages: list[dict[str, Any]] = []
    if system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    result = llm.chat(
        org=org,
        user=user,
        messages=messages,
        model=model or None,
        max_tokens=max_tokens,
        temperature=temperature,
        purpose="execute",
        extra={"response_format": response_format} if response_format else None,
    )
    return {
        "content": result.content,
        "model": result.model,
        "usage": usage_of(result),
        "finish_reason": result.finish_reason,
        "run_id": None,
    }


def execute_agent(*, agent: Agent, user: User, prompt: str) -> dict[str, Any]:
    """One run of ``agent`` on ``prompt`` (its tools included), recorded as an AgentRun."""
    run = run_agent(agent=agent, message=prompt, user=user, trigger="execute")
    prompt_tokens, completion_tokens = int(run.prompt_tokens or 0), int(run.completion_tokens or 0)
    return {
        "content": run.output,
        "model": run.model,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "finish_reason": run.finish_reason,
        "run_id": run.pk,
    }
