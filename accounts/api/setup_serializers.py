"""Serializers of first-run setup, signup settings and the waitlist (names unique project-wide)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework import serializers

from accounts.models import SignupMode, WaitlistEntry


class WaitlistStatusField(serializers.ChoiceField):
    """A waitlist entry's status: pending, approved or rejected."""

    def __init__(self, **kwargs):
        super().__init__(choices=WaitlistEntry.Status.choices, **kwargs)


class WaitlistStatusFieldSchema(OpenApiSerializerFieldExtension):
    """One named ``WaitlistStatusEnum`` component, so that other ``status`` enums never clash."""

    target_class = WaitlistStatusField

    def map_serializer_field(self, auto_schema, direction):
        component = ResolvedComponent(
            name="WaitlistStatusEnum",
            type=ResolvedComponent.SCHEMA,
            object="WaitlistStatusEnum",
            schema={"type": "string", "enum": list(WaitlistEntry.Status.values)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class SetupStatusOutputSerializer(serializers.Serializer):
    bootstrapped = serializers.BooleanField()
    signup_mode = serializers.ChoiceField(choices=SignupMode.choices)
    login_methods = serializers.ListField(
        child=serializers.CharField(), help_text='"email", then the ids of configured social providers.'
    )
    mfa = serializers.ListField(child=serializers.CharField())


class SetupInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    password = serializers.CharField(max_length=128, write_only=True, trim_whitespace=False)
    org_name = serializers.CharField(max_length=200)


class SetupUserOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()


class SetupOrgOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class SetupOutputSerializer(serializers.Serializer):
    user = SetupUserOutputSerializer()
    org = SetupOrgOutputSerializer()


class SignupSettingsSerializer(serializers.Serializer):
    signup_mode = serializers.ChoiceField(choices=SignupMode.choices)


class WaitlistJoinInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    name = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    note = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="")


class WaitlistJoinOutputSerializer(serializers.ModelSerializer):
    """What the public sees of an entry: no name or note, which may be someone else's."""

    status = WaitlistStatusField(read_only=True)

    class Meta:
        model = WaitlistEntry
        fields = ["id", "email", "status", "created_at"]
        read_only_fields = fields


class WaitlistDeciderSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    email = serializers.EmailField()


class WaitlistEntryOutputSerializer(serializers.ModelSerializer):
    """An entry as staff see it."""

    status = WaitlistStatusField(read_only=True)
    decided_by = WaitlistDeciderSerializer(read_only=True, allow_null=True)
    invite = serializers.UUIDField(source="invite_id", read_only=True, allow_null=True)

    class Meta:
        model = WaitlistEntry
        fields = ["id", "email", "name", "note", "status", "created_at", "decided_at", "decided_by", "invite"]
        read_only_fields = fields


class WaitlistFilterSerializer(serializers.Serializer):
    status = WaitlistStatusField(required=False)
