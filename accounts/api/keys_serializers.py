"""Serializers of the API-key endpoints: input shapes (validated types only) and output shapes.

Business rules (who may make which key, which scopes exist) live in ``accounts.services.keys``;
these only check types and ranges. No output serializer ever exposes a secret hash; the whole key
appears only in :class:`ApiKeySecretOutputSerializer`, the answer of create, rotate and roll.
"""

from __future__ import annotations

from django.utils import timezone
from rest_framework import serializers

from accounts.models import ApiKey, ApiKeyUsage, Role
from accounts.services.keys import DEFAULT_GRACE_HOURS, MAX_GRACE_HOURS, api_key_prefix

_SCOPES_HELP = "`*` or `<area>:read|write|*`; empty or omitted = everything the key's role allows."


class ApiKeyListFilterSerializer(serializers.Serializer):
    """Query parameters of the key list."""

    kind = serializers.ChoiceField(
        choices=ApiKey.Kind.choices, required=False, help_text="Only keys of this kind."
    )
    user = serializers.UUIDField(required=False, help_text="Only keys of this user (ADMIN and OWNER).")


class ApiKeyCreateInputSerializer(serializers.Serializer):
    """Body of ``POST /api/v1/api-keys``."""

    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=ApiKey.Kind.choices, default=ApiKey.Kind.PERSONAL)
    role = serializers.ChoiceField(
        choices=Role.choices,
        required=False,
        allow_blank=True,
        default="",
        help_text=(
            "Service/agent keys: the role they act with (default MEMBER). Personal keys: an optional "
            "ceiling below your own role. Never above your current role (403 ERR_ROLE_REQUIRED)."
        ),
    )
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=64, allow_blank=True),
        required=False,
        max_length=64,
        help_text=_SCOPES_HELP,
    )
    agent = serializers.UUIDField(
        required=False, allow_null=True, help_text="Agent keys: the agent they act for."
    )
    autonomy = serializers.ChoiceField(
        choices=ApiKey.Autonomy.choices,
        required=False,
        allow_blank=True,
        default="",
        help_text="Agent keys only (default suggest).",
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Must be in the future."
    )


class ApiKeyUpdateInputSerializer(serializers.Serializer):
    """Body of ``PATCH /api/v1/api-keys/{id}``."""

    name = serializers.CharField(max_length=100, required=False)
    scopes = serializers.ListField(
        child=serializers.CharField(max_length=64, allow_blank=True),
        required=False,
        max_length=64,
        help_text=_SCOPES_HELP,
    )
    is_active = serializers.BooleanField(
        required=False, help_text="false pauses the key; a revoked key stays dead."
    )


class ApiKeyRotateInputSerializer(serializers.Serializer):
    """Body of ``POST /api/v1/api-keys/{id}/rotate``."""

    grace_hours = serializers.IntegerField(
        min_value=0,
        max_value=MAX_GRACE_HOURS,
        default=DEFAULT_GRACE_HOURS,
        help_text="How long the old secret keeps working (0 = dies now, like roll).",
    )


class ApiKeyOutputSerializer(serializers.ModelSerializer):
    """A key as clients see it: masked to its ``prefix``, never a secret or a hash."""

    prefix = serializers.SerializerMethodField(
        help_text="`<kind prefix>_<public id>`: the part before the secret."
    )
    scopes = serializers.ListField(child=serializers.CharField(), read_only=True)
    agent = serializers.UUIDField(source="agent_id", read_only=True, allow_null=True)
    user = serializers.UUIDField(source="user_id", read_only=True, allow_null=True)
    status = serializers.SerializerMethodField(help_text="`active`, `inactive`, `expired` or `revoked`.")
    previous_secret_expires_at = serializers.DateTimeField(
        read_only=True, allow_null=True, help_text="After a rotate: when the previous secret stops working."
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "kind",
            "prefix",
            "role",
            "scopes",
            "agent",
            "autonomy",
            "expires_at",
            "created_at",
            "last_used_at",
            "last_used_ip",
            "user",
            "is_active",
            "revoked_at",
            "previous_secret_expires_at",
            "status",
        ]
        read_only_fields = fields

    def get_prefix(self, key: ApiKey) -> str:
        return api_key_prefix(key)

    def get_status(self, key: ApiKey) -> str:
        if key.revoked_at is not None:
            return "revoked"
        if key.expires_at is not None and key.expires_at <= timezone.now():
            return "expired"
        return "active" if key.is_active else "inactive"


class ApiKeySecretOutputSerializer(ApiKeyOutputSerializer):
    """A key with its whole secret: only in the answers of create, rotate and roll."""

    key = serializers.CharField(
        source="raw_key", read_only=True, help_text="The whole key. Shown once: store it now."
    )

    class Meta(ApiKeyOutputSerializer.Meta):
        fields = [*ApiKeyOutputSerializer.Meta.fields, "key"]
        read_only_fields = fields


class ApiKeyUsageOutputSerializer(serializers.ModelSerializer):
    """One request made with a key."""

    class Meta:
        model = ApiKeyUsage
        fields = ["at", "method", "path", "status", "duration_ms", "ip", "request_id"]
        read_only_fields = fields


class ApiKeyPingOutputSerializer(serializers.Serializer):
    """Answer of the connectivity check."""

    authenticated = serializers.BooleanField()
    key = serializers.CharField(allow_null=True, help_text="The prefix of the key used, or null.")
