"""Reads of an agent's knowledge graph: entities, an entity's relations, a breadth-first walk,
the whole graph for drawing, and likely duplicates.

Every function takes ``org`` and the agent (already checked visible by the caller), and filters
on both: an entity of another org or another agent answers 404.
"""

from __future__ import annotations

from collections.abc import Iterable
from difflib import SequenceMatcher
from typing import Any
from uuid import UUID

from django.db.models import Q, QuerySet

from accounts.models import Organization
from agents.models import Agent
from core.errors import NotFoundError

from ..models import Entity, EntityAlias, Relation
from ..normalize import normalize_name, normalize_relation_type

MAX_DEPTH = 3
MAX_TRAVERSE_NODES = 500
MAX_EXPORT_NODES = 2000
MAX_DUPLICATE_CANDIDATES = 1000
DUPLICATE_RATIO = 0.85


def entity_list(
    *, org: Organization, agent: Agent, type: str | None = None, q: str | None = None
) -> QuerySet[Entity]:
    """The agent's entities, by name; ``type`` exact (case-insensitive), ``q`` in names or aliases."""
    entities = Entity.objects.filter(org=org, agent=agent).order_by("name", "id")
    if type:
        entities = entities.filter(type__iexact=type.strip())
    if q and q.strip():
        key = normalize_name(q)
        match = Q(name__icontains=q.strip())
        if key:
            match |= Q(normalized_name__contains=key) | Q(
                pk__in=EntityAlias.objects.filter(agent=agent, key__contains=key).values("entity_id")
            )
        entities = entities.filter(match)
    return entities


def entity_get(*, org: Organization, agent: Agent, entity_id: Any) -> Entity:
    """One entity of the agent's graph, else 404."""
    entity = Entity.objects.filter(org=org, agent=agent, pk=entity_id).first()
    if entity is None:
        raise NotFoundError("Entity not found.")
    return entity


def entity_relations(*, entity: Entity) -> QuerySet[Relation]:
    """Edges from and to ``entity``, oldest first, with both ends loaded."""
    return (
        Relation.objects.filter(Q(source=entity) | Q(target=entity))
        .select_related("source", "target")
        .order_by("created_at", "id")
    )


def entity_find_by_name(*, org: Organization, agent: Agent, name: str) -> Entity:
    """The entity a name (or alias) stands for, else 404."""
    key = normalize_name(name)
    entity = Entity.objects.filter(org=org, agent=agent, normalized_name=key).first() if key else None
    if entity is None and key:
        alias = (
            EntityAlias.objects.filter(agent=agent, key=key, entity__org=org).select_related("entity").first()
        )
        entity = alias.entity if alias else None
    if entity is None:
        raise NotFoundError("No entity of that name.")
    return entity


def _node(entity: Entity, depth: int | None = None) -> dict[str, Any]:
    node = {"id": entity.pk, "name": entity.name, "type": entity.type}
    if depth is not None:
        node["depth"] = depth
    return node


def _edge(relation: Relation) -> dict[str, Any]:
    return {
        "id": relation.pk,
        "source": relation.source_id,
        "target": relation.target_id,
        "type": relation.type,
        "weight": relation.weight,
    }


def graph_traverse(
    *,
    start: Entity,
    depth: int = 1,
    relation_types: Iterable[str] | None = None,
    direction: str = "both",
    max_nodes: int = MAX_TRAVERSE_NODES,
) -> dict[str, Any]:
    """Breadth-first walk from ``start`` up to ``depth`` hops (≤ 3): every node once, with its hop.

    One query per hop. Edges between visited nodes are all reported (a cycle shows as an edge back
    to a node already seen, never as a second visit). ``direction``: out, in or both.
    """
    depth = max(0, min(int(depth), MAX_DEPTH))
    types = sorted({normalize_relation_type(t) for t in relation_types or [] if normalize_relation_type(t)})
    depths: dict[UUID, int] = {start.pk: 0}
    entities: dict[UUID, Entity] = {start.pk: start}
    edges: dict[UUID, Relation] = {}
    frontier = {start.pk}
    truncated = False
    for hop in range(1, depth + 1):
        if not frontier:
            break
        match = Q()
        if direction in ("out", "both"):
            match |= Q(source_id__in=frontier)
        if direction in ("in", "both"):
            match |= Q(target_id__in=frontier)
        relations = Relation.objects.filter(match, agent_id=start.agent_id)
        if types:
            relations = relations.filter(type__in=types)
        next_frontier: set[UUID] = set()
        for relation in relations.select_related("source", "target").order_by("created_at", "id"):
            for here, there in ((relation.source, relation.target), (relation.target, relation.source)):
                if here.pk not in frontier:
                    continue
                if direction == "out" and here.pk != relation.source_id:
                    continue
                if direction == "in" and here.pk != relation.target_id:
                    continue
                if there.pk not in depths:
                    if len(depths) >= max_nodes:
                        truncated = True
                        continue
                    depths[there.pk] = hop
                    entities[there.pk] = there
                    next_frontier.add(there.pk)
                if there.pk in depths:
                    edges[relation.pk] = relation
        frontier = next_frontier
    return {
        "start": start.pk,
        "depth": depth,
        "nodes": [
            _node(entities[pk], d)
            for pk, d in sorted(depths.items(), key=lambda kv: (kv[1], entities[kv[0]].name))
        ],
        "edges": [_edge(r) for r in edges.values()],
        "truncated": truncated,
    }


def graph_export(*, org: Organization, agent: Agent, limit: int = MAX_EXPORT_NODES) -> dict[str, Any]:
    """The agent's graph as ``{nodes, edges}`` for drawing (at most ``limit`` nodes, edges among them)."""
    entities = list(Entity.objects.filter(org=org, agent=agent).order_by("name", "id")[: limit + 1])
    truncated = len(entities) > limit
    entities = entities[:limit]
    ids = {e.pk for e in entities}
    relations = Relation.objects.filter(org=org, agent=agent).order_by("created_at", "id")
    edges = [_edge(r) for r in relations if r.source_id in ids and r.target_id in ids]
    nodes = [{**_node(e), "aliases": e.aliases, "description": e.description} for e in entities]
    return {"nodes": nodes, "edges": edges, "truncated": truncated}


def graph_duplicates(
    *, org: Organization, agent: Agent, threshold: float = DUPLICATE_RATIO
) -> list[dict[str, Any]]:
    """Pairs of the agent's entities that probably name the same thing, most similar first.

    Reasons: an alias of one is the name or an alias of the other (``alias_overlap``); one
    normalised name contains the other as whole words (``contained``); the names are at least
    ``threshold`` similar (``similar_name``). Looks at the newest ``MAX_DUPLICATE_CANDIDATES``.
    """
    entities = list(
        Entity.objects.filter(org=org, agent=agent).order_by("-updated_at")[:MAX_DUPLICATE_CANDIDATES]
    )
    keys: dict[UUID, set[str]] = {e.pk: {e.normalized_name} for e in entities}
    for entity_id, key in EntityAlias.objects.filter(entity__in=entities).values_list("entity_id", "key"):
        keys[entity_id].add(key)
    pairs: list[dict[str, Any]] = []
    for i, a in enumerate(entities):
        for b in entities[i + 1 :]:
            reason, score = None, 0.0
            if keys[a.pk] & keys[b.pk]:
                reason, score = "alias_overlap", 1.0
            else:
                x, y = a.normalized_name, b.normalized_name
                short, long = sorted((x, y), key=len)
                if short and f" {short} " in f" {long} ":
                    reason, score = "contained", round(len(short) / len(long), 3)
                else:
                    matcher = SequenceMatcher(None, x, y, autojunk=False)
                    if matcher.real_quick_ratio() >= threshold and matcher.quick_ratio() >= threshold:
                        ratio = matcher.ratio()
                        if ratio >= threshold:
                            reason, score = "similar_name", round(ratio, 3)
            if reason:
                first, second = sorted((a, b), key=lambda e: (e.name, str(e.pk)))
                pairs.append({"entities": [_node(first), _node(second)], "reason": reason, "score": score})
    pairs.sort(key=lambda p: (-p["score"], p["entities"][0]["name"]))
    return pairs
