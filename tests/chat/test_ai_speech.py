"""Speech utilities: POST /api/v1/ai/transcribe, the caller's transcripts, POST /api/v1/ai/tts, and
the choke point's media calls (``agents.llm.atranscribe`` / ``aspeech``) behind them, against the
fake OpenAI-compatible upstream."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from accounts.models import AuditLog, Role
from accounts.services.keys import api_key_create
from agents.llm import ProviderAuthError, aclose_clients, aspeech, atranscribe
from chat.models import Transcript
from chat.services import ai_utils
from tests.chat import ai_fixtures
from tests.chat.ai_fixtures import AUDIO_HEADS, audio, upload
from tests.chat.conftest import make_provider
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

# Fixtures shared by the /ai tests.
_fresh_llm = ai_fixtures._fresh_llm
provider = ai_fixtures.provider
usage_events = ai_fixtures.usage_events
guard_log = ai_fixtures.guard_log

TRANSCRIBE = "/api/v1/ai/transcribe"
TRANSCRIPTS = "/api/v1/ai/transcripts"
TTS = "/api/v1/ai/tts"


def transcribe(client, data=None, *, name="voice.mp3", content_type="audio/mpeg", headers=None, **fields):
    body = {"file": upload(name, audio() if data is None else data, content_type), **fields}
    return client.post(TRANSCRIBE, body, format="multipart", **(headers or {}))


def run(make_coro):
    async def wrapper():
        try:
            return await make_coro()
        finally:
            await aclose_clients()

    return async_to_sync(wrapper)()


# --- transcribe ------------------------------------------------------------------------------------


def test_transcribe_stores_and_returns_the_transcript(member_client, member, org, provider, usage_events):
    response = transcribe(
        member_client, audio("the quick brown fox"), language="en", model="gpt-4o-transcribe"
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["text"] == "the quick brown fox"
    assert body["filename"] == "voice.mp3"
    assert body["content_type"] == "audio/mpeg"
    assert body["language"] == "en"
    assert body["model"] == "gpt-4o-transcribe"
    assert body["size_bytes"] == len(audio("the quick brown fox"))
    assert body["usage"]["completion_tokens"] == 4  # the fake reports token usage for this model
    transcript = Transcript.objects.get(pk=body["id"])
    assert (transcript.org, transcript.user, transcript.text) == (org, member, "the quick brown fox")
    assert AuditLog.objects.filter(
        org=org, action="transcript.created", entity_id=str(transcript.pk)
    ).exists()
    (event,) = usage_events
    assert event["purpose"] == "transcription"
    assert event["status"] == "ok"
    assert event["model"] == "gpt-4o-transcribe"
    assert event["user_id"] == str(member.pk)
    assert event["prompt_tokens"] >= 1 and event["completion_tokens"] == 4


@pytest.mark.parametrize("kind", sorted(AUDIO_HEADS))
def test_every_supported_audio_format_is_accepted(member_client, provider, kind):
    head, content_type, extension = AUDIO_HEADS[kind]
    response = transcribe(
        member_client, audio(f"format {kind}", kind), name=f"a.{extension}", content_type=content_type
    )

    assert response.status_code == 201, response.content
    assert response.json()["text"] == f"format {kind}"


def test_an_undeclared_type_is_judged_by_the_content(member_client, provider):
    response = transcribe(
        member_client, audio("no type", "wav"), name="rec", content_type="application/octet-stream"
    )

    assert response.status_code == 201, response.content
    assert response.json()["content_type"] == "audio/wav"


def test_whisper_models_report_the_duration(member_client, provider, usage_events, settings):
    settings.LLM_TRANSCRIBE_MODEL = "whisper-1"
    response = transcribe(member_client, audio("x") + bytes(32000))

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == "whisper-1"  # the default model comes from the setting
    assert body["duration_seconds"] == pytest.approx(len(audio("x") + bytes(32000)) / 16000, abs=0.01)
    (event,) = usage_events
    assert event["usage_estimated"] is True
    assert event["audio_seconds"] == body["duration_seconds"]


def test_a_text_file_named_mp3_is_refused_by_its_content(member_client, provider, fake_upstream):
    before = fake_upstream.stats["requests"]
    response = transcribe(member_client, b"just some text, not audio at all\n" * 10, name="notes.mp3")

    error = assert_envelope(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
    assert "content" in error["message"]
    assert fake_upstream.stats["requests"] == before  # nothing went upstream
    assert not Transcript.objects.exists()


def test_a_declared_type_that_is_not_audio_is_refused(member_client, provider):
    response = transcribe(member_client, name="voice.txt", content_type="text/plain")

    error = assert_envelope(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
    assert error["details"]["declared_type"] == "text/plain"


def test_a_declared_type_that_contradicts_the_content_is_refused(member_client, provider):
    response = transcribe(member_client, audio("x", "wav"), name="voice.mp3", content_type="audio/mpeg")

    error = assert_envelope(response, 415, "ERR_MEDIA_TYPE_MISMATCH")
    assert error["details"] == {"declared_type": "audio/mpeg", "detected": "wav"}


def test_a_missing_or_empty_file_is_a_validation_error(member_client, provider):
    error = assert_envelope(member_client.post(TRANSCRIBE, {"language": "en"}, format="multipart"), 400)
    assert "file" in error["details"]["fields"]
    assert_envelope(transcribe(member_client, b""), 400)


def test_a_file_over_the_limit_is_413_before_anything_is_sent(
    member_client, provider, monkeypatch, fake_upstream
):
    monkeypatch.setattr(ai_utils, "MAX_AUDIO_BYTES", 1000)
    before = fake_upstream.stats["requests"]

    response = transcribe(member_client, audio() + bytes(2000))

    error = assert_envelope(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert error["details"]["limit_bytes"] == 1000
    assert fake_upstream.stats["requests"] == before


def test_a_body_over_25_mb_is_refused_by_the_body_limit(member_client, provider):
    response = transcribe(member_client, audio() + bytes(ai_utils.MAX_AUDIO_BYTES + 300 * 1024))

    assert_envelope(response, 413, "ERR_PAYLOAD_TOO_LARGE")
    assert not Transcript.objects.exists()


def test_a_body_between_1_mb_and_25_mb_is_accepted(member_client, provider):
    response = transcribe(member_client, audio("big one") + bytes(3 * 1024 * 1024))

    assert response.status_code == 201, response.content
    assert response.json()["text"] == "big one"


def test_no_provider_is_424(member_client):
    assert_envelope(transcribe(member_client), 424, "ERR_NO_PROVIDER")
    assert not Transcript.objects.exists()


def test_an_upstream_failure_is_mapped_and_nothing_is_stored(member_client, provider, usage_events):
    response = transcribe(member_client, model="fail-500")

    assert_envelope(response, 502, "ERR_PROVIDER_UNAVAILABLE")
    assert not Transcript.objects.exists()
    (event,) = usage_events
    assert event["status"] == "error"


def test_a_rejected_request_is_a_bad_request_error(member_client, provider):
    assert_envelope(transcribe(member_client, model="fail-400"), 502, "ERR_PROVIDER_BAD_REQUEST")


def test_a_viewer_may_not_transcribe(org, provider):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    assert_envelope(transcribe(client_for(viewer)), 403, "ERR_ROLE_REQUIRED")


def test_anonymous_callers_are_refused(anon_client):
    assert transcribe(anon_client).status_code in (401, 403)


def test_an_api_key_needs_the_ai_write_scope(org, member, provider):
    _key, read_only = api_key_create(org=org, actor=member, name="ro", scopes=["ai:read"])
    _key, writer = api_key_create(org=org, actor=member, name="rw", scopes=["ai:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {read_only}")
    assert_envelope(transcribe(client), 403, "ERR_SCOPE_REQUIRED")
    assert client.get(TRANSCRIPTS).status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {writer}")
    assert transcribe(client).status_code == 201


# --- the caller's transcripts ----------------------------------------------------------------------


@pytest.fixture
def owners_transcript(owner_client, provider):
    response = transcribe(owner_client, audio("owner's words"))
    assert response.status_code == 201, response.content
    return response.json()


def test_transcripts_list_only_the_callers_own_paginated(
    owner_client, member_client, owners_transcript, provider
):
    for i in range(3):
        assert transcribe(member_client, audio(f"member {i}")).status_code == 201

    mine = member_client.get(TRANSCRIPTS, {"limit": 2}).json()
    assert mine["total"] == 3 and mine["limit"] == 2 and len(mine["items"]) == 2
    assert [t["text"] for t in mine["items"]] == ["member 2", "member 1"]  # newest first
    theirs = owner_client.get(TRANSCRIPTS).json()
    assert [t["id"] for t in theirs["items"]] == [owners_transcript["id"]]


def test_owner_member_outsider_on_one_transcript(
    owner_client, member_client, outsider_client, owners_transcript
):
    url = f"{TRANSCRIPTS}/{owners_transcript['id']}"

    assert owner_client.get(url).json()["text"] == "owner's words"
    assert_envelope(member_client.get(url), 404, "ERR_NOT_FOUND")  # another user's: not theirs to see
    assert_envelope(outsider_client.get(url), 404)
    assert_envelope(member_client.delete(url), 404)
    assert_envelope(outsider_client.delete(url), 404)
    assert outsider_client.get(TRANSCRIPTS).json()["total"] == 0
    assert Transcript.objects.filter(pk=owners_transcript["id"]).exists()


def test_deleting_a_transcript(owner_client, org, owners_transcript):
    url = f"{TRANSCRIPTS}/{owners_transcript['id']}"

    assert owner_client.delete(url).status_code == 204
    assert_envelope(owner_client.get(url), 404)
    assert_envelope(owner_client.delete(url), 404)
    assert AuditLog.objects.filter(org=org, action="transcript.deleted").count() == 1


def test_an_unknown_transcript_is_404(owner_client):
    assert_envelope(owner_client.get(f"{TRANSCRIPTS}/{uuid.uuid4()}"), 404)


# --- tts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "magic"),
    [
        ("mp3", "audio/mpeg", b"ID3"),
        ("wav", "audio/wav", b"RIFF"),
        ("opus", "audio/ogg", b"OggS"),
        ("flac", "audio/flac", b"fLaC"),
        ("aac", "audio/aac", b"\xff\xf1"),
    ],
)
def test_tts_answers_audio_of_the_format(member_client, provider, fmt, content_type, magic):
    response = member_client.post(TTS, {"text": "Good morning", "format": fmt}, format="json")

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == content_type
    assert response.content.startswith(magic)
    assert response.content.endswith(b"SAY:Good morning")  # the fake speaks the text it was given
    assert int(response["Content-Length"]) == len(response.content)


def test_tts_defaults_to_mp3_and_honours_accept_audio(member_client, provider, usage_events, settings):
    settings.LLM_TTS_MODEL = "tts-special"
    response = member_client.post(
        TTS,
        json.dumps({"text": "hi", "voice": "nova"}),
        content_type="application/json",
        HTTP_ACCEPT="audio/mpeg",
    )

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "audio/mpeg"
    assert response["X-Model"] == "tts-special"
    (event,) = usage_events
    assert event["purpose"] == "speech" and event["characters"] == 2 and event["status"] == "ok"


def test_tts_text_over_500_characters_is_400(member_client, provider, fake_upstream):
    before = fake_upstream.stats["requests"]
    error = assert_envelope(
        member_client.post(TTS, {"text": "a" * 501}, format="json"), 400, "ERR_VALIDATION"
    )

    assert "text" in error["details"]["fields"]
    assert fake_upstream.stats["requests"] == before
    assert member_client.post(TTS, {"text": "a" * 500}, format="json").status_code == 200


@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": "   "}, {"text": "hi", "format": "midi"}])
def test_tts_bad_input_is_400(member_client, provider, body):
    assert_envelope(member_client.post(TTS, body, format="json"), 400)


def test_tts_errors_answer_json_even_to_an_audio_client(member_client, provider):
    response = member_client.post(
        TTS,
        json.dumps({"text": "hi", "model": "fail-503"}),
        content_type="application/json",
        HTTP_ACCEPT="audio/mpeg",
    )
    assert_envelope(response, 502, "ERR_PROVIDER_UNAVAILABLE")


def test_tts_without_provider_is_424(member_client):
    assert_envelope(member_client.post(TTS, {"text": "hi"}, format="json"), 424, "ERR_NO_PROVIDER")


def test_tts_outsider_and_viewer(org, outsider_client, provider):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    assert_envelope(client_for(viewer).post(TTS, {"text": "hi"}, format="json"), 403)
    # The outsider speaks in their own org, which has no provider: nothing of org A is used.
    assert_envelope(outsider_client.post(TTS, {"text": "hi"}, format="json"), 424, "ERR_NO_PROVIDER")


# --- the media calls of the choke point ------------------------------------------------------------


def test_media_calls_run_the_guards_and_send_one_event_each(org, member, provider, usage_events, guard_log):
    result = run(lambda: aspeech(org=org, user=member, text="hello", format="wav"))
    assert result.audio.startswith(b"RIFF") and result.content_type == "audio/wav"
    assert result.provider_source == "org" and result.provider_id == provider.pk

    heard = run(
        lambda: atranscribe(
            org=org, user=member, audio=audio("guarded"), filename="a.mp3", content_type="audio/mpeg"
        )
    )
    assert heard.text == "guarded"

    assert [e["purpose"] for e in usage_events] == ["speech", "transcription"]
    assert [entry[0] for entry in guard_log] == ["before", "after", "before", "after"]
    assert guard_log[0][1]["purpose"] == "speech" and guard_log[0][1]["estimated_prompt_tokens"] >= 1
    assert guard_log[3][3] == "reservation"


def test_media_calls_fail_over_to_the_next_provider(org, member, fake_upstream, allow_loopback, usage_events):
    broken = make_provider(
        org, fake_upstream, priority=1, extra_headers=json.dumps({"X-Fake-Mode": "fail-503"})
    )
    working = make_provider(org, fake_upstream, priority=2)

    heard = run(
        lambda: atranscribe(
            org=org, user=member, audio=audio("second"), filename="a.mp3", content_type="audio/mpeg"
        )
    )

    assert heard.text == "second" and heard.provider_id == working.pk
    assert len(usage_events) == 1 and usage_events[0]["provider_id"] == str(working.pk)
    broken.refresh_from_db()
    assert broken.consecutive_failures == 1


def test_a_refused_key_is_a_provider_auth_error(org, member, fake_upstream, allow_loopback, usage_events):
    make_provider(org, fake_upstream, api_key=f"fail-401-{uuid.uuid4().hex}")

    with pytest.raises(ProviderAuthError):
        run(lambda: aspeech(org=org, user=member, text="hi"))
    (event,) = usage_events
    assert event["status"] == "error" and event["error_code"] == "ERR_PROVIDER_AUTH"


def test_a_replayed_transcribe_with_an_idempotency_key_runs_once(member_client, provider, fake_upstream):
    first = transcribe(member_client, audio("once"), headers={"HTTP_IDEMPOTENCY_KEY": "tr-1"})
    before = fake_upstream.stats["requests"]
    again = transcribe(member_client, audio("once"), headers={"HTTP_IDEMPOTENCY_KEY": "tr-1"})

    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert fake_upstream.stats["requests"] == before
    assert Transcript.objects.count() == 1


@pytest.mark.parametrize(
    "content",
    [
        b"%PDF-1.7\n" + bytes(64),
        b"\x89PNG\r\n\x1a\n" + bytes(64),
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00" + bytes(64),  # an iPhone photo, not audio
        b"\xff\xf1\x50\x80" + bytes(64),  # raw AAC (ADTS): not a format providers take
        b"",
    ],
)
def test_content_that_is_not_supported_audio_is_refused_even_undeclared(member_client, provider, content):
    response = transcribe(member_client, content, name="upload", content_type="application/octet-stream")
    assert response.status_code in (400, 415), response.content
    assert not Transcript.objects.exists()
