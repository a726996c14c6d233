"""Serializers of /api/v1/ai: inputs are checked here, the rules live in ``chat.services.ai_*``."""

from __future__ import annotations

from rest_framework import serializers

from agents.llm import SPEECH_FORMATS
from chat.models import Transcript
from chat.services.ai_extract import MAX_INSTRUCTIONS_CHARS
from chat.services.ai_utils import MAX_TTS_CHARS

MAX_PROMPT_CHARS = 200_000
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


class AIUsageOutputSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AITranscribeInputSerializer(serializers.Serializer):
    file = serializers.FileField(
        help_text="The audio (mp3, wav, ogg/opus, webm, flac, m4a), at most 25 MB.", allow_empty_file=True
    )
    language = serializers.CharField(
        required=False, allow_blank=True, max_length=16, help_text="ISO-639-1 code of the speech, e.g. `en`."
    )
    model = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Default: `LLM_TRANSCRIBE_MODEL`."
    )


class TranscriptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Transcript
        fields = [
            "id",
            "filename",
            "content_type",
            "size_bytes",
            "duration_seconds",
            "language",
            "model",
            "text",
            "created_at",
        ]
        read_only_fields = fields


class TranscriptCreatedOutputSerializer(TranscriptOutputSerializer):
    usage = AIUsageOutputSerializer(help_text="Tokens of the call (estimated when the provider sent none).")

    class Meta(TranscriptOutputSerializer.Meta):
        fields = [*TranscriptOutputSerializer.Meta.fields, "usage"]
        read_only_fields = fields


class AISpeechInputSerializer(serializers.Serializer):
    text = serializers.CharField(max_length=MAX_TTS_CHARS, help_text="At most 500 characters.")
    voice = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="The provider's voice; default `alloy`."
    )
    model = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Default: `LLM_TTS_MODEL`."
    )
    format = serializers.ChoiceField(choices=list(SPEECH_FORMATS), default="mp3")


class AIExtractInputSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="png, jpeg, webp or gif, at most 10 MB.", allow_empty_file=True)
    schema = serializers.CharField(
        trim_whitespace=False,
        help_text=(
            'A JSON Schema of an object, as a JSON string, e.g. {"type": "object", "properties": '
            '{"surname": {"type": "string"}, "date_of_birth": {"type": "string", "format": "date"}}}.'
        ),
    )
    instructions = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_INSTRUCTIONS_CHARS, help_text="Hints for the model."
    )
    model = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="A vision model; default `LLM_VISION_MODEL`, else the org's model.",
    )


class AIExtractWarningOutputSerializer(serializers.Serializer):
    field = serializers.CharField(help_text="Path of the value, e.g. `address.city` or `tags[0]`.")
    message = serializers.CharField()


class AIExtractOutputSerializer(serializers.Serializer):
    data = serializers.DictField(
        child=serializers.JSONField(allow_null=True),
        help_text="Exactly the schema's properties; null where the model could not read a valid value.",
    )
    warnings = AIExtractWarningOutputSerializer(many=True)
    model = serializers.CharField()
    usage = AIUsageOutputSerializer()


class AIExecuteInputSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, trim_whitespace=False)
    system = serializers.CharField(required=False, allow_blank=True, max_length=MAX_PROMPT_CHARS)
    model = serializers.CharField(required=False, allow_blank=True, max_length=200)
    agent = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="Run this agent (its prompt, model and tools) instead; then only `prompt` may be given.",
    )
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=200_000)
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    response_format = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text='Passed upstream: {"type": "text" | "json_object" | "json_schema", "json_schema": {…}}.',
    )

    def validate_response_format(self, value):
        if value is None:
            return None
        if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMAT_TYPES:
            kinds = ", ".join(RESPONSE_FORMAT_TYPES)
            raise serializers.ValidationError(f"An object whose type is one of {kinds}.")
        if value["type"] == "json_schema" and not isinstance(value.get("json_schema"), dict):
            raise serializers.ValidationError('type json_schema needs a "json_schema" object.')
        return value

    def validate_prompt(self, value):
        if not value.strip():
            raise serializers.ValidationError("The prompt is empty.")
        return value

    def validate(self, attrs):
        if attrs.get("agent"):
            others = [
                name
                for name in ("system", "model", "max_tokens", "temperature", "response_format")
                if attrs.get(name) not in (None, "")
            ]
            if others:
                raise serializers.ValidationError(
                    {name: ["Not with `agent`: the agent's own settings apply."] for name in others}
                )
        return attrs


class AIExecuteOutputSerializer(serializers.Serializer):
    content = serializers.CharField(allow_blank=True)
    model = serializers.CharField(allow_blank=True)
    usage = AIUsageOutputSerializer()
    finish_reason = serializers.CharField(allow_blank=True)
    run_id = serializers.UUIDField(allow_null=True, help_text="The AgentRun, when an agent ran.")
