"""Input and output shapes of the provider, model catalogue and AI config endpoints.

Keys are write-only everywhere: inputs accept ``api_key``; outputs only ever carry
``api_key_masked`` (``core.crypto.mask``) and the names of extra headers, never their values.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agents.models import PersonalAIConfig, Provider, ProviderType
from agents.services.providers import extra_header_names
from core.crypto import mask

_API_BASE_HELP = "http(s) base URL of the OpenAI-compatible API; empty for the type's default."


# --- providers -------------------------------------------------------------------------------------------


class ProviderCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    provider_type = serializers.ChoiceField(choices=ProviderType.choices, default=ProviderType.OPENAI_COMPAT)
    api_base = serializers.CharField(max_length=500, allow_blank=True, default="", help_text=_API_BASE_HELP)
    api_key = serializers.CharField(
        max_length=4000,
        allow_blank=True,
        default="",
        write_only=True,
        help_text="Write-only; stored encrypted.",
    )
    enabled = serializers.BooleanField(default=True)
    priority = serializers.IntegerField(min_value=0, max_value=32767, default=100, help_text="Lower first.")
    extra_headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=4000, trim_whitespace=False),
        required=False,
        allow_null=True,
        help_text="Extra request headers (write-only; reads show only their names).",
    )


class ProviderUpdateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    provider_type = serializers.ChoiceField(choices=ProviderType.choices, required=False)
    api_base = serializers.CharField(
        max_length=500, allow_blank=True, required=False, help_text=_API_BASE_HELP
    )
    api_key = serializers.CharField(
        max_length=4000,
        allow_blank=True,
        required=False,
        write_only=True,
        help_text="Write-only; an empty string removes the key.",
    )
    enabled = serializers.BooleanField(required=False)
    priority = serializers.IntegerField(min_value=0, max_value=32767, required=False)
    extra_headers = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=4000, trim_whitespace=False),
        required=False,
        allow_null=True,
        help_text="Replaces every extra header; null or {} removes them.",
    )


class ProviderOutputSerializer(serializers.ModelSerializer):
    api_key_masked = serializers.SerializerMethodField(help_text="The key as `sk-…abcd`; '' when none.")
    has_api_key = serializers.SerializerMethodField()
    extra_header_names = serializers.SerializerMethodField()
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Provider
        fields = [
            "id",
            "name",
            "provider_type",
            "api_base",
            "api_key_masked",
            "has_api_key",
            "extra_header_names",
            "enabled",
            "priority",
            "is_verified",
            "verified_at",
            "last_error",
            "consecutive_failures",
            "unhealthy_until",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_api_key_masked(self, provider: Provider) -> str:
        return mask(provider.api_key)

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_has_api_key(self, provider: Provider) -> bool:
        return bool(provider.api_key)

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_extra_header_names(self, provider: Provider) -> list[str]:
        return extra_header_names(provider)


class ProviderModelOutputSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The model id to use in requests.")


class ProviderModelListOutputSerializer(serializers.Serializer):
    items = ProviderModelOutputSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class ProviderVerifyInputSerializer(serializers.Serializer):
    model = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="Given: a real one-token completion with this model. Omitted: reachability only.",
    )


class ProviderVerifyOutputSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    error = serializers.CharField(required=False, help_text="Why it failed (only when not valid).")
    error_code = serializers.CharField(
        required=False, help_text="The platform error code of the failure, e.g. ERR_PROVIDER_AUTH."
    )
    latency_ms = serializers.FloatField()


# --- the catalogue ---------------------------------------------------------------------------------------


class ProviderRefOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class CatalogueModelOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    provider = ProviderRefOutputSerializer()


class CatalogueErrorOutputSerializer(serializers.Serializer):
    provider = ProviderRefOutputSerializer()
    code = serializers.CharField()
    message = serializers.CharField()


class ModelCatalogueOutputSerializer(serializers.Serializer):
    items = CatalogueModelOutputSerializer(many=True)
    total = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    errors = CatalogueErrorOutputSerializer(
        many=True, help_text="Providers that could not list their models."
    )


# --- AI configs -------------------------------------------------------------------------------------------


class OrgAIConfigInputSerializer(serializers.Serializer):
    primary_provider = serializers.UUIDField(
        required=False, allow_null=True, help_text="Id of one of the org's providers; null for none."
    )
    primary_model = serializers.CharField(max_length=200, required=False, allow_blank=True)
    allow_personal_keys = serializers.BooleanField(required=False)


class OrgAIConfigOutputSerializer(serializers.Serializer):
    primary_provider = serializers.UUIDField(source="primary_provider_id", allow_null=True)
    primary_provider_name = serializers.SerializerMethodField()
    primary_model = serializers.CharField()
    allow_personal_keys = serializers.BooleanField()
    updated_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(OpenApiTypes.STR)
    def get_primary_provider_name(self, config) -> str | None:
        return config.primary_provider.name if config.primary_provider_id else None


class PersonalAIConfigInputSerializer(serializers.Serializer):
    provider_type = serializers.ChoiceField(choices=ProviderType.choices, required=False)
    api_base = serializers.CharField(
        max_length=500, allow_blank=True, required=False, help_text=_API_BASE_HELP
    )
    api_key = serializers.CharField(
        max_length=4000,
        allow_blank=True,
        required=False,
        write_only=True,
        help_text="Write-only; an empty string removes the key.",
    )
    model = serializers.CharField(max_length=200, allow_blank=True, required=False)


class PersonalAIConfigOutputSerializer(serializers.Serializer):
    allowed = serializers.BooleanField(help_text="Whether the current org lets members use personal keys.")
    configured = serializers.BooleanField(help_text="Whether you saved a personal key.")
    provider_type = serializers.CharField()
    api_base = serializers.CharField()
    api_key_masked = serializers.CharField()
    model = serializers.CharField()
    updated_at = serializers.DateTimeField(allow_null=True)

    @staticmethod
    def render(config: PersonalAIConfig | None, *, allowed: bool) -> dict:
        """The answer for ``config`` (None: nothing saved yet)."""
        return PersonalAIConfigOutputSerializer(
            {
                "allowed": allowed,
                "configured": config is not None and bool(config.api_key or config.api_base),
                "provider_type": config.provider_type if config else ProviderType.OPENAI_COMPAT,
                "api_base": config.api_base if config else "",
                "api_key_masked": mask(config.api_key) if config else "",
                "model": config.model if config else "",
                "updated_at": config.updated_at if config else None,
            }
        ).data
