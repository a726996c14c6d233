"""Input of the OpenAI-compatible endpoints. Fields not listed are ignored, as OpenAI-compatible
servers do; the shape of ``messages`` / ``input`` is checked by ``chat.services.openai_compat``."""

from __future__ import annotations

from rest_framework import serializers

from .fast_input import FastInputSerializer


class _StopField(serializers.JSONField):
    """``stop``: a string or a list of at most four strings."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) <= 4 and all(isinstance(v, str) for v in value):
            return value
        raise serializers.ValidationError("Must be a string or a list of at most 4 strings.")


class ChatCompletionInputSerializer(FastInputSerializer):
    """``POST /v1/chat/completions``."""

    model = serializers.CharField(max_length=300, help_text="`agent:<key>`, or a provider model name.")
    messages = serializers.ListField(child=serializers.DictField(), allow_empty=False)
    stream = serializers.BooleanField(default=False)
    stream_options = serializers.DictField(required=False, allow_null=True)
    tools = serializers.ListField(child=serializers.DictField(), required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False, allow_null=True)
    top_p = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True)
    max_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    max_completion_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    response_format = serializers.DictField(required=False, allow_null=True)
    stop = _StopField(required=False, allow_null=True)
    n = serializers.IntegerField(min_value=1, max_value=1, required=False, allow_null=True)
    presence_penalty = serializers.FloatField(min_value=-2, max_value=2, required=False, allow_null=True)
    frequency_penalty = serializers.FloatField(min_value=-2, max_value=2, required=False, allow_null=True)
    seed = serializers.IntegerField(required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    logit_bias = serializers.DictField(required=False, allow_null=True)
    user = serializers.CharField(max_length=256, required=False, allow_blank=True)


class ResponseInputSerializer(FastInputSerializer):
    """``POST /v1/responses``."""

    model = serializers.CharField(max_length=300, help_text="`agent:<key>`, or a provider model name.")
    input = serializers.JSONField(help_text="A string, or a list of message / function_call(_output) items.")
    instructions = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    stream = serializers.BooleanField(default=False)
    tools = serializers.ListField(child=serializers.DictField(), required=False, allow_null=True)
    tool_choice = serializers.JSONField(required=False, allow_null=True)
    temperature = serializers.FloatField(min_value=0, max_value=2, required=False, allow_null=True)
    top_p = serializers.FloatField(min_value=0, max_value=1, required=False, allow_null=True)
    max_output_tokens = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    parallel_tool_calls = serializers.BooleanField(required=False, allow_null=True)
    text = serializers.DictField(required=False, allow_null=True)
    metadata = serializers.DictField(required=False, allow_null=True)
    store = serializers.BooleanField(required=False, allow_null=True)
    previous_response_id = serializers.CharField(required=False, allow_null=True, allow_blank=True)
    user = serializers.CharField(max_length=256, required=False, allow_blank=True)

    def validate_previous_response_id(self, value):
        if value:
            raise serializers.ValidationError(
                "Responses are not stored here; send the conversation in `input` instead."
            )
        return value


class OpenAIModelSerializer(serializers.Serializer):
    """One model of ``GET /v1/models``: an agent the caller may call."""

    id = serializers.CharField(help_text="`agent:<key>`")
    object = serializers.CharField(default="model")
    created = serializers.IntegerField(help_text="Unix time the agent was created.")
    owned_by = serializers.CharField(help_text="The slug of the agent's organisation.")
    name = serializers.CharField(help_text="The agent's display name.")


class OpenAIModelListSerializer(serializers.Serializer):
    """``GET /v1/models``: OpenAI's list shape (not paginated)."""

    object = serializers.CharField(default="list")
    data = OpenAIModelSerializer(many=True)
