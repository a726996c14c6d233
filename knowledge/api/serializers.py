"""Serializers of the knowledge endpoints: input shapes (types and ranges) and output shapes.

Rules (chunk overlap below size, known languages and models, file types by content, plan limits)
live in the services.
"""

from __future__ import annotations

from rest_framework import serializers

from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.search import MAX_TOP_K, MODES
from knowledge.search.keyword import LANGUAGES
from knowledge.selectors import kb_status


class KnowledgeBaseInputSerializer(serializers.Serializer):
    """Create or change a knowledge base (every field optional on PATCH)."""

    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True)
    chunk_size = serializers.IntegerField(min_value=32, max_value=4096, required=False, help_text="Tokens.")
    chunk_overlap = serializers.IntegerField(min_value=0, max_value=1024, required=False, help_text="Tokens.")
    embedding_backend = serializers.ChoiceField(choices=KnowledgeBase.Backend.choices, required=False)
    embedding_model = serializers.CharField(
        max_length=200, required=False, allow_blank=True,
        help_text="Provider model (default LLM_EMBEDDING_MODEL) or local model (all-minilm-l6-v2).",
    )  # fmt: skip
    language = serializers.ChoiceField(choices=LANGUAGES, required=False)


class IndexVersionSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    backend = serializers.CharField()
    model = serializers.CharField()
    dimension = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    activated_at = serializers.DateTimeField(allow_null=True)


class KnowledgeBaseStatusSerializer(serializers.Serializer):
    state = serializers.ChoiceField(choices=["ready", "building", "keyword_only"])
    note = serializers.CharField()
    search_modes = serializers.ListField(child=serializers.CharField())
    index_version = serializers.UUIDField(allow_null=True)
    building = serializers.ListField(child=serializers.DictField())


class KnowledgeBaseOutputSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(read_only=True, help_text="standard (agent memory KBs are not listed here).")
    status = serializers.SerializerMethodField()
    document_count = serializers.SerializerMethodField()
    active_index = IndexVersionSerializer(allow_null=True)

    class Meta:
        model = KnowledgeBase
        fields = [
            "id", "name", "description", "kind", "chunk_size", "chunk_overlap", "embedding_backend",
            "embedding_model", "language", "active_index", "status", "document_count", "created_at",
            "updated_at",
        ]  # fmt: skip

    def get_status(self, kb) -> KnowledgeBaseStatusSerializer:
        return kb_status(kb)

    def get_document_count(self, kb) -> int:
        count = getattr(kb, "document_count", None)
        return count if count is not None else kb.documents.count()


class DocumentTextInputSerializer(serializers.Serializer):
    """A document from text (JSON ``{title, text}``) or from a URL (``{url}``)."""

    title = serializers.CharField(max_length=300, required=False, allow_blank=True)
    text = serializers.CharField(required=False, trim_whitespace=False, allow_blank=True)
    url = serializers.URLField(max_length=2000, required=False)
    format = serializers.ChoiceField(
        choices=["text", "markdown", "html", "csv", "json"], required=False, help_text="How to read `text`."
    )
    metadata = serializers.DictField(required=False)

    def validate(self, attrs):
        if not attrs.get("text") and not attrs.get("url"):
            raise serializers.ValidationError({"text": ["Send `text` (or `url`, or a multipart `file`)."]})
        if attrs.get("text") and attrs.get("url"):
            raise serializers.ValidationError({"url": ["Send either `text` or `url`, not both."]})
        return attrs


class DocumentUploadInputSerializer(serializers.Serializer):
    """Multipart upload: ``file`` (txt, md, html, pdf, docx, csv, json; at most 50 MB)."""

    file = serializers.FileField()
    title = serializers.CharField(max_length=300, required=False, allow_blank=True)
    metadata = serializers.JSONField(required=False, help_text="A JSON object, as a string field.")


class DocumentOutputSerializer(serializers.ModelSerializer):
    kb_id = serializers.UUIDField()
    job = serializers.UUIDField(source="job_id", allow_null=True)
    job_status = serializers.SerializerMethodField()
    job_percent = serializers.SerializerMethodField()

    class Meta:
        model = Document
        fields = [
            "id", "kb_id", "title", "source", "source_url", "filename", "file_type", "size_bytes",
            "content_hash", "metadata", "status", "attempts", "error_code", "error_message", "chunk_count",
            "token_count", "embedded", "job", "job_status", "job_percent", "created_at", "updated_at",
            "processed_at",
        ]  # fmt: skip

    def get_job_status(self, document) -> str | None:
        return document.job.status if document.job_id and document.job else None

    def get_job_percent(self, document) -> int | None:
        return document.job.percent if document.job_id and document.job else None


class DocumentCreatedSerializer(DocumentOutputSerializer):
    duplicate = serializers.BooleanField(help_text="True when the KB already held this content.")

    class Meta(DocumentOutputSerializer.Meta):
        fields = [*DocumentOutputSerializer.Meta.fields, "duplicate"]


class ChunkOutputSerializer(serializers.ModelSerializer):
    document_id = serializers.UUIDField()

    class Meta:
        model = Chunk
        fields = [
            "id",
            "document_id",
            "seq",
            "text",
            "token_count",
            "page",
            "section",
            "metadata",
            "created_at",
        ]


class SearchFiltersSerializer(serializers.Serializer):
    document_ids = serializers.ListField(child=serializers.UUIDField(), required=False, max_length=1000)
    metadata = serializers.DictField(required=False, help_text="Document metadata, exact match per key.")


class SearchInputSerializer(serializers.Serializer):
    query = serializers.CharField(max_length=2000)
    top_k = serializers.IntegerField(min_value=1, max_value=MAX_TOP_K, required=False, default=10)
    mode = serializers.ChoiceField(choices=MODES, required=False, default="hybrid")
    filters = SearchFiltersSerializer(required=False)


class SearchHitSerializer(serializers.Serializer):
    document_id = serializers.UUIDField()
    chunk_id = serializers.UUIDField()
    score = serializers.FloatField()
    text = serializers.CharField()
    snippet = serializers.CharField(help_text="HTML-escaped excerpt, query terms in <mark>.")
    page = serializers.IntegerField(allow_null=True)
    section = serializers.CharField()
    seq = serializers.IntegerField()
    title = serializers.CharField()
    metadata = serializers.DictField()
    keyword_rank = serializers.IntegerField(allow_null=True)
    vector_rank = serializers.IntegerField(allow_null=True)
    keyword_score = serializers.FloatField(allow_null=True)
    vector_score = serializers.FloatField(allow_null=True)


class SearchOutputSerializer(serializers.Serializer):
    items = SearchHitSerializer(many=True)
    mode = serializers.CharField()
    mode_used = serializers.CharField(help_text="keyword when no vector index could answer a hybrid search.")
    index_version = serializers.UUIDField(allow_null=True)
    notes = serializers.ListField(child=serializers.CharField())
    took_ms = serializers.FloatField()


class ReindexInputSerializer(serializers.Serializer):
    rechunk = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Also re-ingest every document with the current chunk settings.",
    )


class JobAcceptedSerializer(serializers.Serializer):
    job = serializers.UUIDField()
    status = serializers.CharField()
    index_version = serializers.UUIDField(allow_null=True, required=False)
    documents_requeued = serializers.IntegerField(required=False)


class RagStatsSerializer(serializers.Serializer):
    knowledge_bases = serializers.IntegerField()
    documents = serializers.DictField(child=serializers.IntegerField(), help_text="Count per state.")
    chunks = serializers.IntegerField()
    chunks_missing_vectors = serializers.IntegerField()
    stuck_documents = serializers.ListField(child=serializers.DictField())
    index_versions = serializers.ListField(child=serializers.DictField())
    local_backend_available = serializers.BooleanField()
