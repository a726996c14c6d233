"""The /api/v1/ai utilities served by a real ASGI server (Daphne in another process), the way
production runs them: sync views that call the async choke point on the server's own event loop,
several calls in a row on the same loop."""

from __future__ import annotations

import json

import httpx
import pytest

from chat.models import Transcript
from tests.chat.ai_fixtures import PNG, audio
from tests.chat.conftest import api_key_for, make_provider
from tests.support.asgi_server import run_asgi_server

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}


def test_transcribe_tts_extract_and_execute_through_daphne(tmp_path, org, member, fake_upstream):
    make_provider(org, fake_upstream)
    headers = {"Authorization": f"Bearer {api_key_for(org, member)}"}
    with (
        run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server,
        httpx.Client(base_url=f"{server.base_url}/api/v1/ai", headers=headers, timeout=30) as client,
    ):
        for i in range(2):  # the second round reuses the loop's clients
            heard = client.post("/transcribe", files={"file": ("a.mp3", audio(f"round {i}"), "audio/mpeg")})
            assert heard.status_code == 201, (heard.text, server.log())
            assert heard.json()["text"] == f"round {i}"

            spoken = client.post(
                "/tts", json={"text": "hello", "format": "flac"}, headers={"Accept": "audio/flac"}
            )
            assert spoken.status_code == 200, spoken.text
            assert spoken.headers["content-type"] == "audio/flac" and spoken.content.startswith(b"fLaC")

        schema = {"type": "object", "properties": {"name": {"type": "string"}}}
        read = client.post(
            "/extract",
            files={"image": ("a.png", PNG, "image/png")},
            data={"schema": json.dumps(schema), "model": "json-vision"},
        )
        assert read.status_code == 200, read.text
        assert read.json()["data"] == {"name": "name value"}

        answer = client.post("/execute", json={"prompt": "ping"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["content"] == "echo: ping"

        refused = client.post("/transcribe", files={"file": ("a.mp3", b"plain text" * 10, "audio/mpeg")})
        assert refused.status_code == 415
        assert refused.json()["error"]["code"] == "ERR_UNSUPPORTED_MEDIA_TYPE"
    assert Transcript.objects.filter(org=org, user=member).count() == 2
