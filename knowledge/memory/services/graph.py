"""Writes of an agent's knowledge graph: upsert entities by normalised name or alias, add
relations, delete, and merge one entity into another.

Every entity write goes through :func:`entity_upsert` so that "ACME Inc.", "acme inc" and an entity
with the alias "Acme" all land on one row. Aliases are stored twice on purpose: as the display list
``Entity.aliases`` and, normalised, as ``EntityAlias`` rows that upserts look up with an index
(JSON containment is not portable to SQLite). Only this module writes either.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from accounts.models import User
from accounts.services.audit import audit_record
from agents.models import Agent
from core.errors import ValidationError

from ..models import Entity, EntityAlias, Relation
from ..normalize import clean_label, normalize_name, normalize_relation_type

MAX_ALIASES = 50


def _snapshot(entity: Entity) -> dict[str, Any]:
    return {
        "name": entity.name,
        "type": entity.type,
        "description": entity.description,
        "aliases": list(entity.aliases or []),
    }


def _clean_aliases(aliases: list[str] | None, *, name_key: str) -> list[str]:
    """Distinct (by normalised key) display aliases, without the entity's own name."""
    seen = {name_key}
    kept: list[str] = []
    for alias in aliases or []:
        label = clean_label(alias)
        key = normalize_name(label)
        if key and key not in seen:
            seen.add(key)
            kept.append(label)
    return kept[:MAX_ALIASES]


def _sync_alias_keys(entity: Entity) -> None:
    """Make the ``EntityAlias`` rows match ``entity.aliases``."""
    wanted = {normalize_name(a) for a in entity.aliases or []} - {"", entity.normalized_name}
    current = set(entity.alias_keys.values_list("key", flat=True))
    if current - wanted:
        entity.alias_keys.filter(key__in=current - wanted).delete()
    EntityAlias.objects.bulk_create(
        [EntityAlias(agent_id=entity.agent_id, entity=entity, key=key) for key in sorted(wanted - current)]
    )


def entity_find(*, agent: Agent, keys: list[str]) -> Entity | None:
    """The agent's entity whose normalised name is one of ``keys``, else whose alias is (first key wins)."""
    keys = [k for k in dict.fromkeys(keys) if k]
    if not keys:
        return None
    by_name = {e.normalized_name: e for e in Entity.objects.filter(agent=agent, normalized_name__in=keys)}
    for key in keys:
        if key in by_name:
            return by_name[key]
    aliases = EntityAlias.objects.filter(agent=agent, key__in=keys).select_related("entity").order_by("id")
    by_alias = {}
    for alias in aliases:
        by_alias.setdefault(alias.key, alias.entity)
    for key in keys:
        if key in by_alias:
            return by_alias[key]
    return None


@transaction.atomic
def entity_upsert(
    *,
    agent: Agent,
    actor: User | None,
    name: str,
    type: str = "",
    description: str = "",
    aliases: list[str] | None = None,
    metadata: dict | None = None,
    audit: bool = True,
) -> tuple[Entity, bool]:
    """Create the entity, or update the one it matches (by normalised name, then by alias).

    On a match: a non-empty ``type``/``description`` replaces the stored one, aliases are added
    (a differently written name becomes an alias too), metadata is merged. Returns (entity, created).
    """
    label = clean_label(name)
    key = normalize_name(label)
    if not key:
        raise ValidationError(
            "The entity name needs at least one letter or digit.", details={"name": ["Not a usable name."]}
        )
    alias_labels = [clean_label(a) for a in aliases or []]
    entity = entity_find(agent=agent, keys=[key, *(normalize_name(a) for a in alias_labels)])
    if entity is None:
        entity = Entity(
            org_id=agent.org_id,
            agent=agent,
            name=label,
            normalized_name=key,
            type=clean_label(type, 64),
            description=(description or "").strip(),
            aliases=_clean_aliases(alias_labels, name_key=key),
            metadata=dict(metadata or {}),
        )
        entity.full_clean(validate_unique=False, validate_constraints=False)
        try:
            with transaction.atomic():
                entity.save()
        except IntegrityError:  # a concurrent upsert created it first: update that one instead
            entity = Entity.objects.select_for_update().get(agent=agent, normalized_name=key)
        else:
            _sync_alias_keys(entity)
            if audit:
                audit_record(
                    org=agent.org,
                    actor=actor,
                    action="kg.entity.created",
                    entity=entity,
                    after=_snapshot(entity),
                )
            return entity, True

    entity = Entity.objects.select_for_update().get(pk=entity.pk)
    before = _snapshot(entity)
    if type and clean_label(type, 64):
        entity.type = clean_label(type, 64)
    if description and description.strip():
        entity.description = description.strip()
    extra = list(alias_labels)
    if key != entity.normalized_name:
        extra.append(label)
    entity.aliases = _clean_aliases([*(entity.aliases or []), *extra], name_key=entity.normalized_name)
    if metadata:
        entity.metadata = {**(entity.metadata or {}), **metadata}
    entity.full_clean(validate_unique=False, validate_constraints=False)
    entity.save()
    _sync_alias_keys(entity)
    after = _snapshot(entity)
    if audit and after != before:
        audit_record(
            org=agent.org, actor=actor, action="kg.entity.updated", entity=entity, before=before, after=after
        )
    return entity, False


@transaction.atomic
def entity_delete(*, entity: Entity, actor: User | None) -> None:
    """Delete an entity and every relation that touches it."""
    before = _snapshot(entity)
    audit_record(org=entity.org, actor=actor, action="kg.entity.deleted", entity=entity, before=before)
    entity.delete()


@transaction.atomic
def relation_upsert(
    *,
    agent: Agent,
    actor: User | None,
    source: Entity,
    target: Entity,
    type: str,
    weight: float | None = None,
    description: str = "",
    audit: bool = True,
) -> tuple[Relation, bool]:
    """Add ``source -type-> target``, or update the weight/description of the existing edge."""
    if source.agent_id != agent.pk or target.agent_id != agent.pk:
        raise ValidationError("Both entities must belong to this agent's graph.")
    if source.pk == target.pk:
        raise ValidationError(
            "A relation needs two different entities.", details={"target": ["Same as the source."]}
        )
    kind = normalize_relation_type(type)
    if not kind:
        raise ValidationError("The relation type needs a letter or digit.", details={"type": ["Not usable."]})
    relation = Relation.objects.select_for_update().filter(source=source, target=target, type=kind).first()
    created = relation is None
    if created:
        relation = Relation(
            org_id=agent.org_id,
            agent=agent,
            source=source,
            target=target,
            type=kind,
            weight=1.0 if weight is None else float(weight),
            description=(description or "").strip(),
        )
    else:
        if weight is not None:
            relation.weight = float(weight)
        if description and description.strip():
            relation.description = description.strip()
    relation.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            relation.save()
    except IntegrityError:  # a concurrent request added the same edge
        relation = Relation.objects.get(source=source, target=target, type=kind)
        created = False
    if audit:
        audit_record(
            org=agent.org,
            actor=actor,
            action="kg.relation.created" if created else "kg.relation.updated",
            entity=relation,
            after={
                "source": str(source.pk),
                "target": str(target.pk),
                "type": kind,
                "weight": relation.weight,
            },
        )
    return relation, created


@transaction.atomic
def relation_delete(*, relation: Relation, actor: User | None) -> None:
    """Delete one edge."""
    audit_record(
        org=relation.org,
        actor=actor,
        action="kg.relation.deleted",
        entity=relation,
        before={"source": str(relation.source_id), "target": str(relation.target_id), "type": relation.type},
    )
    relation.delete()


@transaction.atomic
def entity_merge(*, entity: Entity, into: Entity, actor: User | None) -> Entity:
    """Fold ``entity`` into ``into``: relations re-pointed, aliases and metadata merged, ``entity`` gone.

    Edges that would duplicate one ``into`` already has keep the higher weight; edges between the two
    (which would become self-loops) are dropped. All or nothing.
    """
    if entity.agent_id != into.agent_id:
        raise ValidationError("Only entities of the same agent can be merged.")
    if entity.pk == into.pk:
        raise ValidationError("An entity cannot be merged into itself.", details={"into": ["Same entity."]})
    # Lock both rows in a stable order so two opposite merges cannot deadlock.
    locked = {
        e.pk: e for e in Entity.objects.select_for_update().filter(pk__in=[entity.pk, into.pk]).order_by("pk")
    }
    entity, into = locked[entity.pk], locked[into.pk]
    before = {"merged": _snapshot(entity), "into": _snapshot(into)}

    for relation in Relation.objects.select_for_update().filter(source=entity).order_by("pk"):
        _repoint(relation, source=into, target=relation.target)
    for relation in Relation.objects.select_for_update().filter(target=entity).order_by("pk"):
        _repoint(relation, source=relation.source, target=into)

    into.aliases = _clean_aliases(
        [*(into.aliases or []), entity.name, *(entity.aliases or [])], name_key=into.normalized_name
    )
    into.metadata = {**(entity.metadata or {}), **(into.metadata or {})}
    into.type = into.type or entity.type
    into.description = into.description or entity.description
    merged_id = entity.pk
    entity.delete()
    into.full_clean(validate_unique=False, validate_constraints=False)
    into.save()
    _sync_alias_keys(into)
    audit_record(
        org=into.org,
        actor=actor,
        action="kg.entity.merged",
        entity=into,
        before=before,
        after={"into": _snapshot(into), "merged_id": str(merged_id)},
    )
    return into


def _repoint(relation: Relation, *, source: Entity, target: Entity) -> None:
    """Move one edge to new endpoints, folding it into an existing twin or dropping a self-loop."""
    if source.pk == target.pk:
        relation.delete()
        return
    twin = (
        Relation.objects.filter(source=source, target=target, type=relation.type)
        .exclude(pk=relation.pk)
        .first()
    )
    if twin is not None:
        twin.weight = max(twin.weight, relation.weight)
        twin.description = twin.description or relation.description
        twin.save(update_fields=["weight", "description", "updated_at"])
        relation.delete()
        return
    relation.source, relation.target = source, target
    relation.save(update_fields=["source", "target", "updated_at"])
