"""Serializers of the caller's own endpoints (``/api/v1/me…``; names unique project-wide)."""

from __future__ import annotations

from rest_framework import serializers

from accounts.models import Role, User
from accounts.services.me import known_timezones, normalised_language


class MeOrgRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class MeOutputSerializer(serializers.ModelSerializer):
    """The caller's profile."""

    active_org = MeOrgRefSerializer(read_only=True, allow_null=True)

    class Meta:
        model = User
        fields = [
            "id",
            "email",
            "display_name",
            "avatar_url",
            "language",
            "timezone",
            "is_staff",
            "date_joined",
            "last_login",
            "active_org",
        ]
        read_only_fields = fields


class MeUpdateInputSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=150, allow_blank=True, required=False)
    avatar_url = serializers.URLField(max_length=500, allow_blank=True, required=False)
    language = serializers.CharField(max_length=16, required=False)
    timezone = serializers.CharField(max_length=64, required=False)

    def validate_language(self, value: str) -> str:
        language = normalised_language(value)
        if language is None:
            raise serializers.ValidationError("Give a language code such as en or fr.")
        return language

    def validate_timezone(self, value: str) -> str:
        if value not in known_timezones():
            raise serializers.ValidationError("Give an IANA zone such as Europe/Paris.")
        return value

    def validate(self, attrs):
        unknown = set(getattr(self, "initial_data", {}) or {}) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(
                {field: ["This field cannot be changed here."] for field in sorted(unknown)}
            )
        return attrs


class MeUserRefSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()


class MeOrgRoleSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeCurrentSerializer(serializers.Serializer):
    org = MeOrgRefSerializer(allow_null=True)
    role = serializers.ChoiceField(choices=Role.choices, allow_null=True)
    permissions = serializers.ListField(child=serializers.CharField())


class MePermissionsOutputSerializer(serializers.Serializer):
    user = MeUserRefSerializer()
    orgs = MeOrgRoleSerializer(many=True)
    current = MeCurrentSerializer()


class MeActiveOrgInputSerializer(serializers.Serializer):
    org_id = serializers.UUIDField()


class MeActiveOrgOutputSerializer(serializers.Serializer):
    org = MeOrgRefSerializer()
    role = serializers.ChoiceField(choices=Role.choices)


class MeExportQuerySerializer(serializers.Serializer):
    job = serializers.UUIDField(required=False)


class MeExportStartedSerializer(serializers.Serializer):
    job = serializers.UUIDField()
