"""Conversations with an agent, their messages, the per-turn event log and message feedback.

A conversation belongs to one user in one org and is bound to an agent. Messages keep their
position (``index``) so that branching (copy ``[0, n)``) and the history cursor are stable. A
streaming turn writes its events to ``MessageEvent`` with a per-message sequence number: that log
is what lets a client in any web process resume with ``Last-Event-ID``.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Channel(models.TextChoices):
    CONSOLE = "console", "Console"
    API = "api", "API"
    OPENAI = "openai", "OpenAI-compatible"
    WS = "ws", "WebSocket"
    CRON = "cron", "Cron"
    WEBHOOK = "webhook", "Webhook"


class Conversation(models.Model):
    """One user's thread with an agent."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="conversations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations")
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    title_generated = models.BooleanField(default=False, help_text="The title came from the LLM.")
    channel = models.CharField(max_length=16, choices=Channel.choices, default=Channel.CONSOLE)
    archived_at = models.DateTimeField(null=True, blank=True)
    branched_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="branches"
    )
    branch_label = models.CharField(max_length=100, blank=True)
    branch_point = models.PositiveIntegerField(
        null=True, blank=True, help_text="Messages [0, branch_point) were copied from the parent."
    )
    message_count = models.PositiveIntegerField(default=0)
    last_message_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["org", "user", "-updated_at"], name="conv_org_user_updated"),
            models.Index(fields=["org", "agent"], name="conv_org_agent"),
            models.Index(fields=["last_message_at"], name="conv_last_message"),
        ]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Message(models.Model):
    """One message of a conversation; an assistant message of a turn fills in as it streams."""

    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"
        TOOL = "tool", "Tool"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        COMPLETE = "complete", "Complete"
        STREAMING = "streaming", "Streaming"
        CANCELLED = "cancelled", "Cancelled"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    index = models.PositiveIntegerField(help_text="Position in the conversation, from 0.")
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True, help_text="The text of the message (all text parts joined).")
    parts = models.JSONField(
        default=list,
        blank=True,
        help_text="Content parts: text, image refs, tool calls, tool results, citations.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=32, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="{code, message} of a failed turn.")
    citations = models.JSONField(default=list, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    usage_estimated = models.BooleanField(default=False)
    run = models.ForeignKey(
        "agents.AgentRun", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reply_to = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="For an assistant message: the user message it answers.",
    )
    last_seq = models.PositiveIntegerField(default=0, help_text="Sequence number of the turn's last event.")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    on_disconnect = models.CharField(
        max_length=16, default="continue", help_text="continue | cancel: what a client going away does."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["conversation", "index"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "index"], name="message_conversation_index"),
        ]
        indexes = [
            models.Index(fields=["org", "status"], name="message_org_status"),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.index} of {self.conversation_id}"


class MessageEvent(models.Model):
    """One event of a streaming turn, in order: the replay log behind ``Last-Event-ID``."""

    id = models.BigAutoField(primary_key=True)
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    event = models.CharField(max_length=32)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["message", "seq"]
        constraints = [models.UniqueConstraint(fields=["message", "seq"], name="message_event_seq")]

    def __str__(self) -> str:
        return f"{self.event} #{self.seq}"


class MessageFeedback(models.Model):
    """A user's thumbs up or down, with an optional comment, on an assistant message."""

    class Rating(models.TextChoices):
        UP = "up", "Up"
        DOWN = "down", "Down"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    rating = models.CharField(max_length=8, choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["message", "user"], name="feedback_message_user")]

    def __str__(self) -> str:
        return f"{self.rating} on {self.message_id}"
