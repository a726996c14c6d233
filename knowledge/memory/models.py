"""Tables of `knowledge.memory`: an agent's memory documents, its knowledge graph and the
episodic summaries of its conversations.

The *text* of memory documents and summaries lives in `knowledge` documents of hidden per-agent
knowledge bases (``kind=agent_memory`` / ``episodic``), so it is chunked, embedded and searched by
the same code as any KB. The rows here hold what only this sub-app knows: which path (and which
user) a memory document answers to, the graph, and which message range of which conversation a
summary covers. Conversations are referred to by id only: `knowledge` never imports `chat`.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class MemoryDocument(models.Model):
    """A document of an agent's memory, addressed by path; ``user`` set = that user's own memory."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="memory_documents")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="+",
        help_text="Set for per-user memory; empty for memory the agent shares with everyone.",
    )
    path = models.CharField(max_length=255)
    content = models.TextField(blank=True)
    content_hash = models.CharField(max_length=64)
    document = models.ForeignKey(
        "knowledge.Document",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The knowledge document that holds the chunks of the current content.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["path"]
        constraints = [
            # NULL users are distinct in SQL: the shared memory needs its own constraint.
            models.UniqueConstraint(
                fields=["agent", "path"], condition=Q(user__isnull=True), name="memdoc_agent_path_shared"
            ),
            models.UniqueConstraint(
                fields=["agent", "user", "path"],
                condition=Q(user__isnull=False),
                name="memdoc_agent_user_path",
            ),
        ]
        indexes = [models.Index(fields=["agent", "user", "path"], name="memdoc_agent_user_path_idx")]

    def __str__(self) -> str:
        return self.path


class Entity(models.Model):
    """A node of an agent's knowledge graph; unique per agent by its normalised name."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="kg_entities")
    name = models.CharField(max_length=200)
    normalized_name = models.CharField(max_length=200)
    type = models.CharField(max_length=64, blank=True)
    description = models.TextField(blank=True)
    aliases = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "entities"
        constraints = [
            models.UniqueConstraint(fields=["agent", "normalized_name"], name="kg_entity_agent_name"),
        ]
        indexes = [models.Index(fields=["agent", "type"], name="kg_entity_agent_type")]

    def __str__(self) -> str:
        return self.name


class EntityAlias(models.Model):
    """The lookup index of an entity's aliases (normalised), so upserts match aliases too."""

    id = models.BigAutoField(primary_key=True)
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="+")
    entity = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="alias_keys")
    key = models.CharField(max_length=200)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["entity", "key"], name="kg_alias_entity_key")]
        indexes = [models.Index(fields=["agent", "key"], name="kg_alias_agent_key")]

    def __str__(self) -> str:
        return self.key


class Relation(models.Model):
    """A directed, typed edge between two entities of the same agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="kg_relations")
    source = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="outgoing")
    target = models.ForeignKey(Entity, on_delete=models.CASCADE, related_name="incoming")
    type = models.CharField(max_length=64)
    weight = models.FloatField(default=1.0)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["source", "target", "type"], name="kg_relation_unique"),
            models.CheckConstraint(condition=~Q(source=models.F("target")), name="kg_relation_not_self"),
        ]
        indexes = [models.Index(fields=["agent", "type"], name="kg_relation_agent_type")]

    def __str__(self) -> str:
        return f"{self.source_id} -{self.type}-> {self.target_id}"


class EpisodicSummary(models.Model):
    """The summary of one conversation of an agent, up to message ``last_index``.

    One row per conversation: when new messages arrive and the conversation falls idle again, the
    summary is rewritten (from the old summary plus the new messages) and its range extended.
    ``claimed_at`` is the lease a worker takes by a conditional UPDATE before summarising.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey("agents.Agent", on_delete=models.CASCADE, related_name="episodic_summaries")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    conversation_id = models.UUIDField(unique=True)
    first_index = models.PositiveIntegerField(null=True, blank=True)
    last_index = models.PositiveIntegerField(null=True, blank=True, help_text="Empty until summarised.")
    message_count = models.PositiveIntegerField(default=0)
    summary = models.TextField(blank=True)
    document = models.ForeignKey(
        "knowledge.Document", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_message_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-last_message_at", "-created_at"]
        verbose_name_plural = "episodic summaries"
        indexes = [models.Index(fields=["agent", "-last_message_at"], name="episodic_agent_last")]

    def __str__(self) -> str:
        return f"Summary of {self.conversation_id}"
