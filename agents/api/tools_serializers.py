"""Serializers of the tools API, the agent tool list and wake (input and output, unique names)."""

from __future__ import annotations

from rest_framework import serializers

MAX_WAKE_MESSAGE_CHARS = 100_000


class BuiltinToolOutputSerializer(serializers.Serializer):
    """A tool as the org sees it: schema, whether it is on, and its settings."""

    name = serializers.CharField()
    description = serializers.CharField()
    parameters = serializers.JSONField(help_text="JSON schema of the tool's arguments.")
    enabled = serializers.BooleanField()
    default_enabled = serializers.BooleanField()
    config = serializers.JSONField(help_text="The org's settings of the tool.")
    config_schema = serializers.JSONField(help_text="JSON schema the settings must fit.")


class BuiltinToolPageOutputSerializer(serializers.Serializer):
    """One page of the tool catalogue (``?limit=&offset=``)."""

    items = BuiltinToolOutputSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class BuiltinToolUpdateInputSerializer(serializers.Serializer):
    """``PUT /tools/builtin/{name}``: enable or disable, and/or replace the settings."""

    enabled = serializers.BooleanField(required=False)
    config = serializers.JSONField(required=False)

    def validate_config(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value

    def validate(self, attrs):
        if not attrs:
            raise serializers.ValidationError("Give enabled, config or both.")
        return attrs


class ToolInvokeInputSerializer(serializers.Serializer):
    """``POST /tools/invoke``: which tool, its arguments, and whether to only check them."""

    tool = serializers.CharField(max_length=64)
    args = serializers.JSONField(required=False, default=dict)
    dry_run = serializers.BooleanField(required=False, default=False)
    agent = serializers.UUIDField(
        required=False, allow_null=True, help_text="Run as this agent (memory tools need one)."
    )

    def validate_args(self, value):
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class ToolInvokeErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class ToolInvokeOutputSerializer(serializers.Serializer):
    """A dry run (``schema``, ``valid``, ``errors``) or a call (``result`` or ``error``)."""

    tool = serializers.CharField()
    schema = serializers.JSONField(required=False, help_text="Dry run: the tool's function schema.")
    valid = serializers.BooleanField(required=False, help_text="Dry run: whether the arguments fit.")
    errors = serializers.ListField(child=serializers.CharField(), required=False)
    result = serializers.JSONField(required=False, help_text="The tool's answer.")
    error = ToolInvokeErrorSerializer(required=False, help_text="The tool's failure.")
    duration_ms = serializers.FloatField(required=False)


class AgentToolOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    parameters = serializers.JSONField()
    schema = serializers.JSONField(help_text="As sent to the model in the chat completion's `tools`.")


class AgentToolUnavailableSerializer(serializers.Serializer):
    name = serializers.CharField()
    reason = serializers.ChoiceField(choices=["unknown", "disabled"])


class AgentToolListOutputSerializer(serializers.Serializer):
    """The agent's usable tools, and the listed ones it cannot use with why."""

    items = AgentToolOutputSerializer(many=True)
    unavailable = AgentToolUnavailableSerializer(many=True)


class AgentWakeInputSerializer(serializers.Serializer):
    message = serializers.CharField(max_length=MAX_WAKE_MESSAGE_CHARS, trim_whitespace=False)
    conversation_id = serializers.UUIDField(required=False, allow_null=True)

    def validate_message(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("This field may not be blank.")
        return value


class AgentWakeUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AgentWakeOutputSerializer(serializers.Serializer):
    """The agent's answer and the run that produced it."""

    content = serializers.CharField(allow_blank=True)
    run_id = serializers.UUIDField()
    usage = AgentWakeUsageSerializer()
    finish_reason = serializers.CharField(help_text="stop or max_tool_iterations")
    provider_source = serializers.CharField(help_text="personal, agent, org or platform")
    model = serializers.CharField(allow_blank=True)
    tool_calls = serializers.IntegerField()
    duration_ms = serializers.IntegerField()
