"""Serializers of the agent endpoints: input shapes (types and ranges only) and output shapes.

Business rules (unique keys, providers of the org, registered tools, who may edit) live in
``agents.services.agents``. No output here exposes a secret: an agent holds none, and its provider
appears as id and name only. The marketplace shape leaves out everything org-internal (provider,
owner, system prompt, knowledge bases).
"""

from __future__ import annotations

from rest_framework import serializers

from agents.models import Agent
from agents.selectors.agents import PROMPT_VARIABLES, agent_can_edit, agent_online, offline_after_seconds
from agents.services.agents import (
    KEY_MAX_LENGTH,
    MAX_LIST_ITEMS,
    MAX_SYSTEM_PROMPT_CHARS,
    TOOL_NAME_MAX_LENGTH,
)

_KEY_HELP = "1-64 of a-z, 0-9, _ and -; unique in the organisation (409 ERR_AGENT_KEY_EXISTS)."
_TOOLS_HELP = "Names of registered tools (400 ERR_UNKNOWN_TOOL otherwise); see GET /api/v1/tools."


class AgentListFilterSerializer(serializers.Serializer):
    """Query parameters of the agent list."""

    visibility = serializers.ChoiceField(choices=Agent.Visibility.choices, required=False)
    status = serializers.ChoiceField(choices=Agent.Status.choices, required=False)
    owner = serializers.UUIDField(required=False, help_text="Only agents of this owner.")
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Part of the name or key."
    )


class _AgentFieldsMixin(serializers.Serializer):
    """The writable fields, shared by create and update (all optional here)."""

    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(allow_blank=True, required=False, max_length=10_000)
    provider = serializers.UUIDField(
        required=False, allow_null=True, help_text="A provider of the org (400 ERR_PROVIDER_NOT_FOUND)."
    )
    model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    system_prompt = serializers.CharField(
        allow_blank=True,
        required=False,
        max_length=MAX_SYSTEM_PROMPT_CHARS,
        trim_whitespace=False,
        help_text="May use {{ variables }}: " + ", ".join(PROMPT_VARIABLES) + ".",
    )
    temperature = serializers.FloatField(min_value=0.0, max_value=2.0, required=False, allow_null=True)
    max_tokens = serializers.IntegerField(min_value=1, max_value=200_000, required=False, allow_null=True)
    max_tool_iterations = serializers.IntegerField(min_value=1, max_value=50, required=False)
    tools = serializers.ListField(
        child=serializers.CharField(max_length=TOOL_NAME_MAX_LENGTH),
        required=False,
        max_length=MAX_LIST_ITEMS,
        help_text=_TOOLS_HELP,
    )
    knowledge_bases = serializers.ListField(
        child=serializers.UUIDField(),
        required=False,
        max_length=MAX_LIST_ITEMS,
        help_text="Knowledge base ids.",
    )
    visibility = serializers.ChoiceField(
        choices=Agent.Visibility.choices,
        required=False,
        help_text="private (owner and shares), org (every member), public (published on the marketplace).",
    )


class AgentCreateInputSerializer(_AgentFieldsMixin):
    """Body of ``POST /api/v1/agents``."""

    key = serializers.RegexField(r"^[a-z0-9_-]{1,64}$", max_length=KEY_MAX_LENGTH, help_text=_KEY_HELP)
    name = serializers.CharField(max_length=200)
    model = serializers.CharField(max_length=200)


class AgentUpdateInputSerializer(_AgentFieldsMixin):
    """Body of ``PATCH /api/v1/agents/{id}`` (every field optional)."""

    key = serializers.RegexField(
        r"^[a-z0-9_-]{1,64}$", max_length=KEY_MAX_LENGTH, required=False, help_text=_KEY_HELP
    )


class AgentOutputSerializer(serializers.ModelSerializer):
    """An agent as its org sees it. ``online`` is computed (running and a recent heartbeat)."""

    provider = serializers.UUIDField(source="provider_id", allow_null=True, read_only=True)
    provider_name = serializers.SerializerMethodField()
    owner = serializers.UUIDField(source="owner_id", allow_null=True, read_only=True)
    owner_name = serializers.SerializerMethodField()
    forked_from = serializers.UUIDField(source="forked_from_id", allow_null=True, read_only=True)
    online = serializers.SerializerMethodField()
    can_edit = serializers.SerializerMethodField(help_text="Whether the caller may edit or delete it.")

    class Meta:
        model = Agent
        fields = [
            "id",
            "key",
            "name",
            "description",
            "provider",
            "provider_name",
            "model",
            "system_prompt",
            "temperature",
            "max_tokens",
            "max_tool_iterations",
            "tools",
            "skills",
            "knowledge_bases",
            "visibility",
            "status",
            "online",
            "last_heartbeat_at",
            "published_at",
            "forked_from",
            "owner",
            "owner_name",
            "can_edit",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_provider_name(self, agent: Agent) -> str | None:
        return agent.provider.name if agent.provider_id and agent.provider else None

    def get_owner_name(self, agent: Agent) -> str | None:
        if agent.owner_id is None or agent.owner is None:
            return None
        return agent.owner.display_name or agent.owner.email

    def get_online(self, agent: Agent) -> bool:
        return agent_online(agent)

    def get_can_edit(self, agent: Agent) -> bool:
        viewer = self.context.get("viewer")
        return bool(viewer is not None and agent_can_edit(agent=agent, viewer=viewer))


class AgentStatusOutputSerializer(serializers.Serializer):
    """The answer of the lifecycle endpoints and one agent of the status stream."""

    id = serializers.UUIDField()
    key = serializers.CharField()
    name = serializers.CharField()
    # A plain string here: the enum is named once, on AgentOutput (no enum name collision).
    status = serializers.CharField(help_text="`stopped` or `running` (the desired state).")
    online = serializers.BooleanField(help_text="running and a heartbeat within offline_after_seconds")
    last_heartbeat_at = serializers.DateTimeField(allow_null=True)
    offline_after_seconds = serializers.IntegerField(help_text="AGENT_OFFLINE_AFTER of the server.")

    def to_representation(self, agent):
        return {
            "id": str(agent.pk),
            "key": agent.key,
            "name": agent.name,
            "status": agent.status,
            "online": agent_online(agent),
            "last_heartbeat_at": agent.last_heartbeat_at.isoformat() if agent.last_heartbeat_at else None,
            "offline_after_seconds": offline_after_seconds(),
        }


class MarketplaceOrgSerializer(serializers.Serializer):
    name = serializers.CharField()
    slug = serializers.CharField()


class MarketplaceAgentOutputSerializer(serializers.ModelSerializer):
    """A published agent as anyone sees it: no provider, owner, system prompt or knowledge bases."""

    org = MarketplaceOrgSerializer(read_only=True)

    class Meta:
        model = Agent
        fields = ["id", "key", "name", "description", "org", "model", "tools", "published_at"]
        read_only_fields = fields


class MarketplaceFilterSerializer(serializers.Serializer):
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Part of the name or description."
    )


class AgentShareInputSerializer(serializers.Serializer):
    """Body of ``POST /api/v1/agents/{id}/shares``."""

    user_id = serializers.UUIDField(help_text="A member of the org (400 ERR_NOT_A_MEMBER otherwise).")


class AgentShareOutputSerializer(serializers.Serializer):
    """One member an agent is shared with."""

    user_id = serializers.UUIDField(source="user.pk")
    email = serializers.EmailField(source="user.email")
    display_name = serializers.CharField(source="user.display_name")
    created_at = serializers.DateTimeField()


class SystemPromptPreviewOutputSerializer(serializers.Serializer):
    """The rendered system prompt, the raw template and the values it was rendered with."""

    system_prompt = serializers.CharField(help_text="Rendered; unknown {{ variables }} render empty.")
    template = serializers.CharField(help_text="The agent's system prompt as stored.")
    variables = serializers.DictField(child=serializers.CharField(allow_blank=True))
    unknown_variables = serializers.ListField(child=serializers.CharField())
    available_variables = serializers.DictField(
        child=serializers.CharField(), help_text="Every variable a prompt may use, with what it holds."
    )


class AgentImportInputSerializer(serializers.Serializer):
    """Multipart body of ``POST /api/v1/agents/import``."""

    file = serializers.FileField(
        help_text="An archive made by GET /api/v1/agents/{id}/export (at most 5 MB)."
    )
