"""POST /api/v1/ai/extract: fields of a JSON Schema read from an image by a vision model.

The fake upstream's ``json`` / ``json-*`` models answer JSON: an object built from the request's
``response_format`` schema (proof that the schema went upstream), or, when the prompt (here the
``instructions``) contains ``FAKE-JSON: …``, exactly that text, so a test scripts what the model
"read": keys it invented, values of the wrong type, fields it left out, or no JSON at all.
"""

from __future__ import annotations

import json

import pytest

from accounts.models import Role
from chat.services import ai_extract
from chat.services.ai_extract import conform, parse_schema
from tests.chat import ai_fixtures
from tests.chat.ai_fixtures import GIF, JPEG, PNG, WEBP, upload
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

_fresh_llm = ai_fixtures._fresh_llm
provider = ai_fixtures.provider
usage_events = ai_fixtures.usage_events

EXTRACT = "/api/v1/ai/extract"
PASSPORT = {
    "type": "object",
    "properties": {
        "surname": {"type": "string"},
        "given_names": {"type": "string"},
        "date_of_birth": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "sex": {"type": "string", "enum": ["F", "M", "X"]},
        "height_cm": {"type": "integer"},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        },
    },
    "required": ["surname"],
}


def extract(client, *, image=PNG, name="scan.png", content_type="image/png", schema=PASSPORT, **fields):
    body = {"image": upload(name, image, content_type), **fields}
    if schema is not None:
        body["schema"] = schema if isinstance(schema, str) else json.dumps(schema)
    body.setdefault("model", "json-vision")
    return client.post(EXTRACT, body, format="multipart")


def scripted(answer) -> str:
    """Instructions that make the fake model answer ``answer`` (a JSON text or any text)."""
    return "FAKE-JSON: " + (answer if isinstance(answer, str) else json.dumps(answer))


# --- the happy path --------------------------------------------------------------------------------


def test_fields_are_read_from_the_image(member_client, member, provider, usage_events):
    response = extract(member_client)

    assert response.status_code == 200, response.content
    body = response.json()
    # The fake fills every property from the schema it received in response_format.
    assert body["data"] == {
        "surname": "surname value",
        "given_names": "given_names value",
        "date_of_birth": None,  # "date_of_birth value" breaks the pattern: nulled, with a warning
        "sex": "F",
        "height_cm": 1,
        "address": {"city": "city value", "zip": "zip value"},
    }
    assert body["warnings"] == [
        {
            "field": "date_of_birth",
            "message": "Set to null: 'date_of_birth value' does not match '^\\\\d{4}-\\\\d{2}-\\\\d{2}$'",
        }
    ]
    assert body["model"] == "json-vision"
    assert body["usage"]["prompt_tokens"] == 10 and body["usage"]["total_tokens"] > 10
    (event,) = usage_events
    assert event["purpose"] == "extraction" and event["user_id"] == str(member.pk)


@pytest.mark.parametrize(
    ("image", "name", "content_type"),
    [
        (PNG, "a.png", "image/png"),
        (JPEG, "a.jpg", "image/jpeg"),
        (WEBP, "a.webp", "image/webp"),
        (GIF, "a.gif", "image/gif"),
    ],
)
def test_every_supported_image_format_is_accepted(member_client, provider, image, name, content_type):
    response = extract(member_client, image=image, name=name, content_type=content_type)
    assert response.status_code == 200, response.content


def test_invented_keys_are_dropped_and_missing_ones_are_null(member_client, provider):
    answer = {
        "surname": "DOE",
        "nationality": "Utopian",  # not in the schema
        "address": {"city": "Springfield", "planet": "Earth"},
    }
    response = extract(member_client, instructions=scripted(answer))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["data"] == {
        "surname": "DOE",
        "given_names": None,
        "date_of_birth": None,
        "sex": None,
        "height_cm": None,
        "address": {"city": "Springfield", "zip": None},
    }
    assert {w["field"] for w in body["warnings"]} == {"nationality", "address.planet"}


def test_values_of_the_wrong_type_become_null_with_a_warning(member_client, provider):
    answer = {"surname": 42, "height_cm": "tall", "sex": "Q", "given_names": "JOHN", "address": "somewhere"}
    response = extract(member_client, instructions=scripted(answer))

    body = response.json()
    assert body["data"]["given_names"] == "JOHN"
    for field in ("surname", "height_cm", "sex", "address"):
        assert body["data"][field] is None
    messages = {w["field"]: w["message"] for w in body["warnings"]}
    assert set(messages) == {"surname", "height_cm", "sex", "address"}
    assert "is not of type 'string'" in messages["surname"]


def test_a_fenced_answer_is_still_read(member_client, provider):
    response = extract(member_client, instructions=scripted('```json\n{"surname": "ROE"}\n```'))
    assert response.json()["data"]["surname"] == "ROE"


def test_an_answer_that_is_not_json_is_502(member_client, provider):
    response = extract(member_client, instructions=scripted("I cannot read this passport, sorry."))

    error = assert_envelope(response, 502, "ERR_EXTRACTION_FAILED")
    assert "cannot read" in error["details"]["answer"]


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        "not json at all",
        "[1, 2]",
        {"type": "object", "properties": {"a": {"type": "strin"}}},
        {"type": "object", "properties": {"a": {"minLength": -1}}},
        {"type": "string"},
        {"type": "object"},
        {"type": "object", "properties": {"a": {"$ref": "https://example.com/schema.json"}}},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}},
    ],
)
def test_a_schema_that_is_not_a_valid_object_schema_is_400(member_client, provider, fake_upstream, schema):
    before = fake_upstream.stats["requests"]
    assert_envelope(extract(member_client, schema=schema), 400, "ERR_INVALID_SCHEMA")
    assert fake_upstream.stats["requests"] == before


def test_local_references_are_followed(member_client, provider):
    schema = {
        "type": "object",
        "$defs": {"name": {"type": "string"}},
        "properties": {"surname": {"$ref": "#/$defs/name"}},
    }
    response = extract(member_client, schema=schema, instructions=scripted({"surname": 7, "extra": 1}))

    body = response.json()
    assert body["data"] == {"surname": None}
    assert {w["field"] for w in body["warnings"]} == {"surname", "extra"}


def test_an_image_that_is_not_an_image_is_415(member_client, provider, fake_upstream):
    before = fake_upstream.stats["requests"]
    response = extract(member_client, image=b"%PDF-1.7 not an image" * 5, name="scan.png")

    assert_envelope(response, 415, "ERR_UNSUPPORTED_MEDIA_TYPE")
    assert fake_upstream.stats["requests"] == before


def test_a_declared_type_that_contradicts_the_image_is_415(member_client, provider):
    assert_envelope(
        extract(member_client, image=JPEG, content_type="image/png"), 415, "ERR_MEDIA_TYPE_MISMATCH"
    )
    assert_envelope(extract(member_client, content_type="application/pdf"), 415, "ERR_UNSUPPORTED_MEDIA_TYPE")


def test_an_image_over_the_limit_is_413(member_client, provider, monkeypatch):
    monkeypatch.setattr(ai_extract, "MAX_IMAGE_BYTES", 100)
    assert_envelope(extract(member_client, image=PNG + bytes(200)), 413, "ERR_PAYLOAD_TOO_LARGE")


def test_missing_fields_are_400(member_client, provider):
    error = assert_envelope(extract(member_client, schema=None), 400)
    assert "schema" in error["details"]["fields"]
    error = assert_envelope(
        member_client.post(EXTRACT, {"schema": json.dumps(PASSPORT)}, format="multipart"), 400
    )
    assert "image" in error["details"]["fields"]


def test_no_provider_is_424(member_client):
    assert_envelope(extract(member_client), 424, "ERR_NO_PROVIDER")


def test_an_upstream_failure_is_mapped(member_client, provider):
    assert_envelope(extract(member_client, model="fail-500"), 502, "ERR_PROVIDER_UNAVAILABLE")


def test_roles(org, outsider_client, provider):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    assert_envelope(extract(client_for(viewer)), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(extract(outsider_client), 424, "ERR_NO_PROVIDER")  # their own org has none


# --- conform (the rules, without a model) ----------------------------------------------------------


def test_conform_nulls_bad_array_items_and_keeps_good_ones():
    schema = parse_schema(
        {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    )
    data, warnings = conform({"tags": ["a", 2, "c"]}, schema)

    assert data == {"tags": ["a", None, "c"]}
    assert [w["field"] for w in warnings] == ["tags[1]"]


def test_conform_accepts_null_for_any_field():
    schema = parse_schema(PASSPORT)
    data, warnings = conform({}, schema)

    assert data == dict.fromkeys(PASSPORT["properties"])
    assert warnings == []
