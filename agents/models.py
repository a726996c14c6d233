"""Providers (bring your own key), org and personal AI settings, agents, their shares and runs,
per-org built-in tool settings and the agents' memory entries."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from core.crypto import EncryptedTextField


class ProviderType(models.TextChoices):
    OPENAI_COMPAT = "openai_compat", "OpenAI-compatible"
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OLLAMA = "ollama", "Ollama"
    OPENROUTER = "openrouter", "OpenRouter"


class Provider(models.Model):
    """An LLM endpoint of an org, spoken to through the OpenAI-compatible protocol."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=100)
    provider_type = models.CharField(
        max_length=16, choices=ProviderType.choices, default=ProviderType.OPENAI_COMPAT
    )
    api_base = models.URLField(max_length=500, blank=True, help_text="Empty: the type's default base URL.")
    api_key = EncryptedTextField(blank=True, help_text="Stored encrypted; reads show it masked.")
    extra_headers = EncryptedTextField(
        blank=True, help_text="JSON object of extra request headers, encrypted."
    )
    enabled = models.BooleanField(default=True)
    priority = models.PositiveSmallIntegerField(default=100, help_text="Failover order: lower first.")
    is_verified = models.BooleanField(default=False)
    verified_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    unhealthy_until = models.DateTimeField(null=True, blank=True, help_text="Skipped by failover until then.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="provider_org_name")]
        indexes = [models.Index(fields=["org", "enabled", "priority"], name="provider_org_enabled")]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider_type})"


class OrgAIConfig(models.Model):
    """An org's primary provider and model, and whether members may bring personal keys."""

    org = models.OneToOneField(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="ai_config")
    primary_provider = models.ForeignKey(
        Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    primary_model = models.CharField(max_length=200, blank=True)
    allow_personal_keys = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"AI config of {self.org}"


class PersonalAIConfig(models.Model):
    """A member's own LLM key (BYOK), used first where the org allows personal keys."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_config")
    provider_type = models.CharField(
        max_length=16, choices=ProviderType.choices, default=ProviderType.OPENAI_COMPAT
    )
    api_base = models.URLField(max_length=500, blank=True)
    api_key = EncryptedTextField(blank=True)
    model = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"AI config of {self.user}"


agent_key_validator = RegexValidator(r"^[a-z0-9_-]{1,64}$", "Use 1-64 of a-z, 0-9, _ and -.")


class Agent(models.Model):
    """An assistant of an org: a model, a system prompt, tools and knowledge."""

    class Visibility(models.TextChoices):
        PRIVATE = "private", "Private (owner and shares)"
        ORG = "org", "Everyone in the org"
        PUBLIC = "public", "Published on the marketplace"

    class Status(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        RUNNING = "running", "Running"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="agents")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="owned_agents",
    )
    key = models.CharField(max_length=64, validators=[agent_key_validator])
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    provider = models.ForeignKey(
        Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="agents"
    )
    model = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    max_tokens = models.PositiveIntegerField(null=True, blank=True, validators=[MaxValueValidator(200_000)])
    max_tool_iterations = models.PositiveSmallIntegerField(
        default=20, validators=[MinValueValidator(1), MaxValueValidator(50)]
    )
    tools = models.JSONField(default=list, blank=True, help_text="Names of the tools the agent may call.")
    skills = models.JSONField(default=list, blank=True, help_text="Ids of granted skills.")
    knowledge_bases = models.JSONField(default=list, blank=True, help_text="Ids of knowledge bases.")
    visibility = models.CharField(max_length=8, choices=Visibility.choices, default=Visibility.ORG)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.STOPPED)
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    published_at = models.DateTimeField(null=True, blank=True)
    forked_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["org", "key"], name="agent_org_key")]
        indexes = [
            models.Index(fields=["org", "status"], name="agent_org_status"),
            models.Index(fields=["visibility", "published_at"], name="agent_published"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class AgentShare(models.Model):
    """A private agent shared with one member of its org."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="shares")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agent_shares")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "user"], name="agent_share_unique")]

    def __str__(self) -> str:
        return f"{self.agent} shared with {self.user}"


class AgentRun(models.Model):
    """One run of an agent (a wake, a chat turn): its steps, tool calls, tokens and outcome."""

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="agent_runs")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="runs")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    conversation_id = models.UUIDField(null=True, blank=True)
    trigger = models.CharField(max_length=32, default="wake")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    finish_reason = models.CharField(max_length=32, blank=True)
    input = models.TextField(blank=True)
    output = models.TextField(blank=True)
    steps = models.JSONField(default=list, blank=True)
    tool_calls = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    provider = models.ForeignKey(Provider, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    provider_source = models.CharField(
        max_length=16, blank=True, help_text="personal, agent, org or platform"
    )
    model = models.CharField(max_length=200, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    error = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="agentrun_org_created"),
            models.Index(fields=["agent", "-created_at"], name="agentrun_agent_created"),
        ]

    def __str__(self) -> str:
        return f"run {self.id} of {self.agent_id} ({self.status})"


class BuiltinToolConfig(models.Model):
    """Whether a built-in tool is enabled in an org, and its settings there."""

    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="tool_configs")
    name = models.CharField(max_length=64)
    enabled = models.BooleanField(default=True)
    config = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="tool_config_org_name")]

    def __str__(self) -> str:
        return f"{self.name} in {self.org}"


class AgentMemoryEntry(models.Model):
    """Something an agent chose to remember (the memory_save tool), optionally per user."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="memory_entries")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    content = models.TextField()
    tags = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["agent", "-created_at"], name="agentmemory_agent_created")]

    def __str__(self) -> str:
        return self.content[:60]
