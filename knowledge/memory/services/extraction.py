"""Knowledge-graph extraction: the agent's model reads a text and answers entities and relations
as structured JSON (``response_format: json_schema``), which is validated in full *before* a single
row is written. A model that answers something else (not JSON, wrong shape, relations between
entities it did not name) gets 502 ``ERR_EXTRACTION_INVALID`` and the graph stays as it was.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import transaction
from rest_framework import serializers

from accounts.models import User
from accounts.services.audit import audit_record
from agents.llm import chat
from agents.models import Agent
from core.errors import ApplicationError

from ..models import Entity, Relation
from ..normalize import normalize_name, normalize_relation_type
from .graph import entity_upsert, relation_upsert

MAX_TEXT_CHARS = 50_000
MAX_ENTITIES = 200
MAX_RELATIONS = 500

EXTRACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "entities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "type": {"type": "string"},
                    "description": {"type": "string"},
                    "aliases": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["name", "type", "description", "aliases"],
                "additionalProperties": False,
            },
        },
        "relations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                    "type": {"type": "string"},
                    "description": {"type": "string"},
                    "weight": {"type": "number"},
                },
                "required": ["source", "target", "type", "description", "weight"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["entities", "relations"],
    "additionalProperties": False,
}

RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "knowledge_graph", "strict": True, "schema": EXTRACTION_SCHEMA},
}

SYSTEM_PROMPT = (
    "You extract a knowledge graph from the user's text. Answer only JSON matching the schema: "
    "`entities` (people, organisations, places, products, concepts, events) with a short type in "
    "lower case, a one-sentence description and other names the text uses for them as aliases; "
    "`relations` between those entities, `source` and `target` being entity names exactly as in "
    "`entities`, `type` a short verb phrase in snake_case (works_for, located_in, part_of), "
    "`weight` between 0 and 1 for how certain the text makes it. Do not invent facts."
)


class ExtractionInvalid(ApplicationError):
    status_code = 502
    code = "ERR_EXTRACTION_INVALID"
    message = "The model's extraction was not valid; nothing was written."


class _ExtractedEntity(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    type = serializers.CharField(max_length=64, allow_blank=True, required=False, default="")
    description = serializers.CharField(max_length=2000, allow_blank=True, required=False, default="")
    aliases = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=50, required=False, default=list
    )

    def validate_name(self, value: str) -> str:
        if not normalize_name(value):
            raise serializers.ValidationError("The name has no letter or digit.")
        return value


class _ExtractedRelation(serializers.Serializer):
    source = serializers.CharField(max_length=200)
    target = serializers.CharField(max_length=200)
    type = serializers.CharField(max_length=64)
    description = serializers.CharField(max_length=2000, allow_blank=True, required=False, default="")
    weight = serializers.FloatField(min_value=0, max_value=1000, required=False, default=1.0)

    def validate_type(self, value: str) -> str:
        if not normalize_relation_type(value):
            raise serializers.ValidationError("The type has no letter or digit.")
        return value


class _Extraction(serializers.Serializer):
    entities = serializers.ListField(child=_ExtractedEntity(), max_length=MAX_ENTITIES)
    relations = serializers.ListField(child=_ExtractedRelation(), max_length=MAX_RELATIONS)

    def validate(self, attrs: dict) -> dict:
        named: dict[str, int] = {}  # normalised name or alias → which extracted entity
        for position, entity in enumerate(attrs["entities"]):
            for label in [entity["name"], *entity["aliases"]]:
                named.setdefault(normalize_name(label), position)
        errors = {}
        for index, relation in enumerate(attrs["relations"]):
            ends = {end: named.get(normalize_name(relation[end])) for end in ("source", "target")}
            missing = [end for end, position in ends.items() if position is None]
            if missing:
                errors[f"relations[{index}]"] = [f"{', '.join(missing)}: not one of the extracted entities."]
            elif ends["source"] == ends["target"]:
                errors[f"relations[{index}]"] = ["source and target are the same entity."]
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_extraction(content: str) -> dict[str, Any]:
    """The model's answer as validated data, or :class:`ExtractionInvalid` saying why not."""
    text = content or ""
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ExtractionInvalid(
            details={"reason": "The model did not answer JSON.", "content": text[:500]}
        ) from exc
    shape = _Extraction(data=data)
    if not isinstance(data, dict) or not shape.is_valid():
        errors = shape.errors if isinstance(data, dict) else {"non_field_errors": ["Not a JSON object."]}
        raise ExtractionInvalid(details={"reason": "The JSON does not match the schema.", "errors": errors})
    return shape.validated_data


def graph_extract(*, agent: Agent, actor: User | None, text: str) -> dict[str, Any]:
    """Extract entities and relations from ``text`` with the agent's model and upsert them.

    The LLM call happens outside any transaction; the writes happen in one, after validation.
    Returns the touched entities and relations and how many of each were new.
    """
    result = chat(
        org=agent.org,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}],
        user=actor,
        agent=agent,
        temperature=0,
        purpose="kg_extract",
        extra={"response_format": RESPONSE_FORMAT},
    )
    data = parse_extraction(result.content)
    return _write_extraction(agent=agent, actor=actor, data=data)


@transaction.atomic
def _write_extraction(*, agent: Agent, actor: User | None, data: dict[str, Any]) -> dict[str, Any]:
    by_key: dict[str, Entity] = {}
    entities: dict[Any, Entity] = {}
    created_entities = 0
    for item in data["entities"]:
        entity, created = entity_upsert(
            agent=agent,
            actor=actor,
            name=item["name"],
            type=item["type"],
            description=item["description"],
            aliases=item["aliases"],
            audit=False,
        )
        created_entities += created
        entities[entity.pk] = entity
        for label in [item["name"], *item["aliases"]]:
            by_key.setdefault(normalize_name(label), entity)
    relations: dict[Any, Relation] = {}
    created_relations = 0
    for item in data["relations"]:
        source, target = by_key[normalize_name(item["source"])], by_key[normalize_name(item["target"])]
        if source.pk == target.pk:  # two names the graph already knew as one entity
            continue
        relation, created = relation_upsert(
            agent=agent,
            actor=actor,
            source=source,
            target=target,
            type=item["type"],
            weight=item["weight"],
            description=item["description"],
            audit=False,
        )
        created_relations += created
        relations[relation.pk] = relation
    summary = {
        "entities": len(entities),
        "relations": len(relations),
        "created_entities": created_entities,
        "created_relations": created_relations,
    }
    audit_record(
        org=agent.org, actor=actor, action="kg.extracted", entity=agent, entity_type="agent", after=summary
    )
    return {
        "entities": list(entities.values()),
        "relations": list(relations.values()),
        "created_entities": created_entities,
        "created_relations": created_relations,
    }
