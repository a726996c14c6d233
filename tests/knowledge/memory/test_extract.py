"""``POST /api/v1/agents/{id}/kg/extract``: structured extraction through the choke point, against
the fake upstream's ``json`` mode (the text after ``FAKE-JSON:`` is the model's answer)."""

from __future__ import annotations

import json

import pytest

from accounts.models import AuditLog
from knowledge.memory.models import Entity, Relation
from knowledge.memory.services.extraction import ExtractionInvalid, parse_extraction
from tests.core.test_errors import assert_envelope

from .conftest import make_agent

GOOD = {
    "entities": [
        {"name": "Alice Martin", "type": "person", "description": "An engineer.", "aliases": ["Alice"]},
        {"name": "Acme Inc.", "type": "company", "description": "Makes anvils.", "aliases": []},
        {"name": "Berlin", "type": "place", "description": "", "aliases": []},
    ],
    "relations": [
        {"source": "Alice", "target": "ACME inc", "type": "works for", "description": "", "weight": 0.9},
        {"source": "Acme Inc.", "target": "Berlin", "type": "located_in", "description": "HQ", "weight": 1},
    ],
}


@pytest.fixture
def json_agent(org, owner, provider):
    return make_agent(org, owner=owner, provider=provider, model="json")


def extract(client, agent, text):
    return client.post(f"/api/v1/agents/{agent.pk}/kg/extract", {"text": text}, format="json")


def scripted(answer) -> str:
    body = answer if isinstance(answer, str) else json.dumps(answer)
    return f"Alice works for Acme in Berlin.\nFAKE-JSON: {body}"


def test_valid_output_is_upserted(json_agent, member_client):
    response = extract(member_client, json_agent, scripted(GOOD))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["created_entities"] == 3 and body["created_relations"] == 2
    assert {e["name"] for e in body["entities"]} == {"Alice Martin", "Acme Inc.", "Berlin"}
    edges = {(r["source"]["name"], r["type"], r["target"]["name"]) for r in body["relations"]}
    assert edges == {("Alice Martin", "works_for", "Acme Inc."), ("Acme Inc.", "located_in", "Berlin")}
    assert AuditLog.objects.filter(action="kg.extracted", entity_id=str(json_agent.pk)).count() == 1

    # The same text again changes nothing new: upserts by normalised name and alias.
    again = extract(member_client, json_agent, scripted(GOOD)).json()
    assert again["created_entities"] == 0 and again["created_relations"] == 0
    assert Entity.objects.filter(agent=json_agent).count() == 3
    assert Relation.objects.filter(agent=json_agent).count() == 2


def test_fenced_json_is_accepted():
    assert parse_extraction("```json\n" + json.dumps(GOOD) + "\n```")["entities"][0]["name"] == "Alice Martin"


@pytest.mark.parametrize(
    "answer",
    [
        "this is not json",
        "[1, 2, 3]",
        {"entities": [{"name": "A"}]},  # no relations
        {"entities": [{"name": "..."}], "relations": []},  # no usable name
        {"entities": [{"name": "A"}], "relations": [{"source": "A", "target": "Ghost", "type": "knows"}]},
        {
            "entities": [{"name": "A", "aliases": ["Al"]}],
            "relations": [{"source": "A", "target": "al", "type": "x"}],
        },
        {
            "entities": [{"name": "A"}, {"name": "B"}],
            "relations": [{"source": "A", "target": "B", "type": "??"}],
        },
        {
            "entities": [{"name": "A"}, {"name": "B"}],
            "relations": [{"source": "A", "target": "B", "type": "x", "weight": -1}],
        },
    ],
)
def test_invalid_output_answers_502_and_writes_nothing(json_agent, member_client, answer):
    response = extract(member_client, json_agent, scripted(answer))
    error = assert_envelope(response, 502, "ERR_EXTRACTION_INVALID")
    assert error["details"]["reason"]
    assert not Entity.objects.exists() and not Relation.objects.exists()
    assert not AuditLog.objects.filter(action__startswith="kg.").exists()


def test_parse_reports_which_relation_is_wrong():
    bad = {"entities": [{"name": "A"}], "relations": [{"source": "A", "target": "Ghost", "type": "knows"}]}
    with pytest.raises(ExtractionInvalid) as caught:
        parse_extraction(json.dumps(bad))
    assert "relations[0]" in json.dumps(caught.value.details)


def test_the_request_carries_a_json_schema_response_format(json_agent, member_client):
    # Without a scripted answer the fake builds one from the request's response_format schema:
    # proof the schema went upstream. Its relations name no extracted entity, so it is refused.
    response = extract(member_client, json_agent, "Alice works for Acme.")
    error = assert_envelope(response, 502, "ERR_EXTRACTION_INVALID")
    assert "relations[0]" in json.dumps(error["details"])


def test_bad_input_and_other_orgs(json_agent, foreign_agent, member_client, outsider_client):
    assert_envelope(member_client.post(f"/api/v1/agents/{json_agent.pk}/kg/extract", {}, format="json"), 400)
    assert_envelope(extract(member_client, json_agent, ""), 400)
    assert_envelope(extract(outsider_client, json_agent, scripted(GOOD)), 404)
    assert_envelope(extract(member_client, foreign_agent, scripted(GOOD)), 404)
    assert not Entity.objects.exists()
