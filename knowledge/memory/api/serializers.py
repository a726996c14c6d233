"""Serializers of the agent memory, knowledge-graph and episodic APIs (input and output, unique names)."""

from __future__ import annotations

from rest_framework import serializers

from ..selectors.graph import MAX_DEPTH
from ..services.documents import MAX_CONTENT_CHARS
from ..services.extraction import MAX_TEXT_CHARS

SEARCH_MODES = ["hybrid", "vector", "keyword"]
MAX_QUERY_CHARS = 2000


def _page(name: str, item: type[serializers.Serializer]) -> type[serializers.Serializer]:
    return type(
        name,
        (serializers.Serializer,),
        {
            "__doc__": f"One page of {item.__name__.replace('OutputSerializer', '')} rows.",
            "items": item(many=True),
            "total": serializers.IntegerField(),
            "limit": serializers.IntegerField(),
            "offset": serializers.IntegerField(),
        },
    )


# --- memory documents --------------------------------------------------------------------------


class MemoryDocumentOutputSerializer(serializers.Serializer):
    """A memory document (``content`` only on the single-document routes)."""

    id = serializers.UUIDField()
    path = serializers.CharField()
    scope = serializers.SerializerMethodField()
    user_id = serializers.UUIDField(allow_null=True)
    chars = serializers.SerializerMethodField()
    content_hash = serializers.CharField()
    document_id = serializers.UUIDField(allow_null=True)
    status = serializers.SerializerMethodField(
        help_text="Ingestion status of the text: pending … ready | failed."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_scope(self, row) -> str:
        return "user" if row.user_id else "agent"

    def get_chars(self, row) -> int:
        return len(row.content)

    def get_status(self, row) -> str | None:
        return row.document.status if row.document_id and row.document is not None else None


class MemoryDocumentDetailOutputSerializer(MemoryDocumentOutputSerializer):
    """A memory document with its content."""

    content = serializers.CharField()


MemoryDocumentPageOutputSerializer = _page(
    "MemoryDocumentPageOutputSerializer", MemoryDocumentOutputSerializer
)


class MemoryDocumentPutInputSerializer(serializers.Serializer):
    """``PUT …/memory/documents/{path}``: the whole new text (markdown or plain)."""

    content = serializers.CharField(max_length=MAX_CONTENT_CHARS, trim_whitespace=False)


class MemorySearchInputSerializer(serializers.Serializer):
    """``POST …/memory/search``."""

    query = serializers.CharField(max_length=MAX_QUERY_CHARS)
    top_k = serializers.IntegerField(min_value=1, max_value=50, required=False, default=5)
    mode = serializers.ChoiceField(choices=SEARCH_MODES, required=False, default="hybrid")
    # A plain string (not an enum) so the schema's enum names do not collide with other "scope"s.
    scope = serializers.CharField(
        required=False, default="all", help_text="agent: shared memory; user: the caller's own; all: both."
    )

    def validate_scope(self, value: str) -> str:
        if value not in ("agent", "user", "all"):
            raise serializers.ValidationError("Must be agent, user or all.")
        return value


class MemorySearchHitOutputSerializer(serializers.Serializer):
    path = serializers.CharField()
    scope = serializers.CharField()
    memory_document_id = serializers.UUIDField()
    document_id = serializers.UUIDField()
    chunk_id = serializers.UUIDField()
    score = serializers.FloatField()
    text = serializers.CharField()
    snippet = serializers.CharField()


class MemorySearchOutputSerializer(serializers.Serializer):
    """Ranked chunks of memory documents, best first."""

    items = MemorySearchHitOutputSerializer(many=True)
    mode = serializers.CharField()
    mode_used = serializers.CharField(help_text="hybrid falls back to keyword without a vector index.")


# --- knowledge graph ---------------------------------------------------------------------------


class EntityOutputSerializer(serializers.Serializer):
    """A knowledge-graph entity."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    normalized_name = serializers.CharField()
    type = serializers.CharField()
    description = serializers.CharField()
    aliases = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


EntityPageOutputSerializer = _page("EntityPageOutputSerializer", EntityOutputSerializer)


class EntityRefOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    type = serializers.CharField()


class RelationOutputSerializer(serializers.Serializer):
    """A directed, typed edge between two entities."""

    id = serializers.UUIDField()
    source = EntityRefOutputSerializer()
    target = EntityRefOutputSerializer()
    type = serializers.CharField()
    weight = serializers.FloatField()
    description = serializers.CharField()
    created_at = serializers.DateTimeField()


class EntityDetailOutputSerializer(EntityOutputSerializer):
    """An entity with the relations from and to it."""

    relations = RelationOutputSerializer(many=True)


class EntityUpsertInputSerializer(serializers.Serializer):
    """``POST …/kg/entities``: create, or update the entity this name or an alias matches."""

    name = serializers.CharField(max_length=200)
    type = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")
    aliases = serializers.ListField(
        child=serializers.CharField(max_length=200), max_length=50, required=False, default=list
    )
    metadata = serializers.JSONField(required=False, default=dict)

    def validate_metadata(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class EntityMergeInputSerializer(serializers.Serializer):
    """``POST …/kg/entities/{eid}/merge``: fold this entity into ``into``."""

    into = serializers.UUIDField()


class RelationCreateInputSerializer(serializers.Serializer):
    """``POST …/kg/relations``: each end by id or by name (or alias) of an existing entity."""

    source = serializers.UUIDField(required=False)
    source_name = serializers.CharField(max_length=200, required=False)
    target = serializers.UUIDField(required=False)
    target_name = serializers.CharField(max_length=200, required=False)
    type = serializers.CharField(max_length=64)
    weight = serializers.FloatField(min_value=0, max_value=1000, required=False)
    description = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")

    def validate(self, attrs):
        for end in ("source", "target"):
            if (end in attrs) == (f"{end}_name" in attrs):
                raise serializers.ValidationError({end: [f"Give exactly one of {end} and {end}_name."]})
        return attrs


class TraverseInputSerializer(serializers.Serializer):
    """``POST …/kg/traverse``: where to start (id or name), how far, along which relation types."""

    entity_id = serializers.UUIDField(required=False)
    name = serializers.CharField(max_length=200, required=False)
    depth = serializers.IntegerField(min_value=0, max_value=MAX_DEPTH, required=False, default=1)
    relation_types = serializers.ListField(
        child=serializers.CharField(max_length=64), max_length=50, required=False, default=list
    )
    direction = serializers.ChoiceField(choices=["out", "in", "both"], required=False, default="both")

    def validate(self, attrs):
        if ("entity_id" in attrs) == ("name" in attrs):
            raise serializers.ValidationError({"entity_id": ["Give exactly one of entity_id and name."]})
        return attrs


class GraphNodeOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    type = serializers.CharField()
    depth = serializers.IntegerField(required=False)
    aliases = serializers.ListField(child=serializers.CharField(), required=False)
    description = serializers.CharField(required=False)


class GraphEdgeOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    source = serializers.UUIDField()
    target = serializers.UUIDField()
    type = serializers.CharField()
    weight = serializers.FloatField()


class TraverseOutputSerializer(serializers.Serializer):
    """The nodes reached (each once, with its hop count) and the edges walked."""

    start = serializers.UUIDField()
    depth = serializers.IntegerField()
    nodes = GraphNodeOutputSerializer(many=True)
    edges = GraphEdgeOutputSerializer(many=True)
    truncated = serializers.BooleanField()


class GraphExportOutputSerializer(serializers.Serializer):
    """The whole graph for drawing."""

    nodes = GraphNodeOutputSerializer(many=True)
    edges = GraphEdgeOutputSerializer(many=True)
    truncated = serializers.BooleanField()


class DuplicatePairOutputSerializer(serializers.Serializer):
    entities = EntityRefOutputSerializer(many=True)
    reason = serializers.ChoiceField(choices=["alias_overlap", "contained", "similar_name"])
    score = serializers.FloatField()


class DuplicateListOutputSerializer(serializers.Serializer):
    """Pairs of entities that probably name the same thing, most similar first."""

    items = DuplicatePairOutputSerializer(many=True)


class ExtractInputSerializer(serializers.Serializer):
    """``POST …/kg/extract``: the text to read."""

    text = serializers.CharField(max_length=MAX_TEXT_CHARS)


class ExtractOutputSerializer(serializers.Serializer):
    """The entities and relations the extraction created or updated."""

    entities = EntityOutputSerializer(many=True)
    relations = RelationOutputSerializer(many=True)
    created_entities = serializers.IntegerField()
    created_relations = serializers.IntegerField()


# --- episodic summaries ------------------------------------------------------------------------


class EpisodicSummaryOutputSerializer(serializers.Serializer):
    """The summary of one conversation and the message range it covers."""

    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    user_id = serializers.UUIDField(allow_null=True)
    first_index = serializers.IntegerField()
    last_index = serializers.IntegerField()
    message_count = serializers.IntegerField()
    summary = serializers.CharField()
    document_id = serializers.UUIDField(allow_null=True)
    last_message_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


EpisodicSummaryPageOutputSerializer = _page(
    "EpisodicSummaryPageOutputSerializer", EpisodicSummaryOutputSerializer
)


class EpisodicSearchInputSerializer(serializers.Serializer):
    """``POST …/episodic/search``."""

    query = serializers.CharField(max_length=MAX_QUERY_CHARS)
    top_k = serializers.IntegerField(min_value=1, max_value=50, required=False, default=5)
    mode = serializers.ChoiceField(choices=SEARCH_MODES, required=False, default="hybrid")


class EpisodicSearchHitOutputSerializer(serializers.Serializer):
    summary_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    first_index = serializers.IntegerField()
    last_index = serializers.IntegerField()
    score = serializers.FloatField()
    text = serializers.CharField()
    snippet = serializers.CharField()
    summary = serializers.CharField()


class EpisodicSearchOutputSerializer(serializers.Serializer):
    """Ranked passages of summaries, best first."""

    items = EpisodicSearchHitOutputSerializer(many=True)
    mode = serializers.CharField()
    mode_used = serializers.CharField()
