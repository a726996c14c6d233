"""Tables of `knowledge`: knowledge bases, their documents, chunks, index versions and vectors.

Keyword search needs a full-text index that Django has no portable field for. It lives beside the
tables, created by migration 0001 per database: on PostgreSQL a ``tsv`` tsvector column of
``knowledge_chunk`` with a GIN index (filled by ingestion in the KB's language) and, from
migration 0002, ``tsv_length`` (its token count, BM25's chunk length); on SQLite an FTS5
table ``knowledge_chunk_fts`` kept in sync with ``knowledge_chunk`` by triggers. Only
``knowledge.search.keyword`` reads them.

Vectors are stored per *index version*: changing a KB's embedding model builds a new version next
to the serving one and switches ``KnowledgeBase.active_index`` in one UPDATE when it is complete.
"""

from __future__ import annotations

import uuid

import numpy as np
from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q


class KnowledgeBase(models.Model):
    """A searchable collection of documents of an org, with its chunking and embedding settings."""

    class Kind(models.TextChoices):
        STANDARD = "standard", "Standard"
        AGENT_MEMORY = "agent_memory", "Agent memory"
        EPISODIC = "episodic", "Episodic summaries"

    class Backend(models.TextChoices):
        NONE = "none", "None (keyword search only)"
        PROVIDER = "provider", "The org's provider (/v1/embeddings)"
        LOCAL = "local", "Local model (offline)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="knowledge_bases")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.STANDARD)
    agent = models.ForeignKey(
        "agents.Agent",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="hidden_knowledge_bases",
        help_text="The agent a memory or episodic KB belongs to.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    chunk_size = models.PositiveIntegerField(
        default=256, validators=[MinValueValidator(32), MaxValueValidator(4096)], help_text="Tokens."
    )
    chunk_overlap = models.PositiveIntegerField(
        default=32, validators=[MaxValueValidator(1024)], help_text="Tokens shared by neighbours."
    )
    embedding_backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.NONE)
    embedding_model = models.CharField(max_length=200, blank=True)
    language = models.CharField(max_length=32, default="english", help_text="Full-text search language.")
    active_index = models.ForeignKey(
        "IndexVersion",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The index version searches read; a new one replaces it when complete.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "kind", "-created_at"], name="kb_org_kind_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(chunk_overlap__lt=models.F("chunk_size")), name="kb_overlap_lt_size"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class IndexVersion(models.Model):
    """The vectors of a KB for one embedding backend and model; one of them serves searches."""

    class Status(models.TextChoices):
        BUILDING = "building", "Building"
        READY = "ready", "Ready (serving)"
        RETIRED = "retired", "Retired"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    kb = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="index_versions")
    backend = models.CharField(max_length=16, choices=KnowledgeBase.Backend.choices)
    model = models.CharField(max_length=200)
    dimension = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.BUILDING)
    # Bumped whenever vectors are added or removed: the search cache compares it, never rebuilds blindly.
    revision = models.PositiveBigIntegerField(default=0)
    error = models.CharField(max_length=500, blank=True)
    job = models.ForeignKey("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    activated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["kb", "status"], name="kb_index_kb_status")]

    def __str__(self) -> str:
        return f"{self.backend}:{self.model} ({self.status})"


class Document(models.Model):
    """One source of a KB (an upload, a text or a URL) moving pending → processing → ready | failed."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        PROCESSING = "processing", "Processing"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        TEXT = "text", "Text"
        URL = "url", "URL"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    kb = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    title = models.CharField(max_length=300)
    source = models.CharField(max_length=16, default=Source.UPLOAD)
    source_url = models.URLField(max_length=2000, blank=True)
    file = models.FileField(upload_to="knowledge/%Y/%m/", blank=True, max_length=300)
    text = models.TextField(blank=True, help_text="The text of a text document (uploads keep a file).")
    filename = models.CharField(max_length=300, blank=True, help_text="Name the client gave the file.")
    file_type = models.CharField(max_length=16, blank=True, help_text="Detected from the content.")
    size_bytes = models.PositiveBigIntegerField(default=0)
    content_hash = models.CharField(max_length=64, db_index=True)
    metadata = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.CharField(max_length=500, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    token_count = models.PositiveIntegerField(default=0)
    embedded = models.BooleanField(default=False, help_text="Whether the serving index has its vectors.")
    job = models.ForeignKey("core.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["kb", "-created_at"], name="kb_doc_kb_created"),
            # The bulk ingestion's queue (the oldest pending documents of a KB): without it each
            # look-up walked past every document already ingested, quadratic over a big upload.
            models.Index(fields=["kb", "created_at"], name="kb_doc_pending", condition=Q(status="pending")),
            models.Index(fields=["status", "lease_expires_at"], name="kb_doc_status_lease"),
            models.Index(fields=["kb", "content_hash"], name="kb_doc_kb_hash"),
        ]

    def __str__(self) -> str:
        return self.title


class Chunk(models.Model):
    """A token-bounded passage of a document, with where it came from (page, section) for citations."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    kb = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="chunks")
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    seq = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField(default=0)
    page = models.PositiveIntegerField(null=True, blank=True)
    section = models.CharField(max_length=300, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["document_id", "seq"]
        constraints = [models.UniqueConstraint(fields=["document", "seq"], name="kb_chunk_doc_seq")]
        indexes = [models.Index(fields=["kb", "content_hash"], name="kb_chunk_kb_hash")]

    def __str__(self) -> str:
        return f"{self.document_id}#{self.seq}"


class ChunkEmbedding(models.Model):
    """The vector of one chunk in one index version (float32 bytes, L2-normalised)."""

    id = models.BigAutoField(primary_key=True)
    index = models.ForeignKey(IndexVersion, on_delete=models.CASCADE, related_name="embeddings")
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="embeddings")
    vector = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["index", "chunk"], name="kb_embedding_index_chunk")]

    def __str__(self) -> str:
        return f"{self.index_id}:{self.chunk_id}"

    def as_array(self) -> np.ndarray:
        return np.frombuffer(bytes(self.vector), dtype=np.float32)
