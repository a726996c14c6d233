"""Input and output shapes of the organisation, member, invite and group endpoints.

Inputs only validate types and lengths; every business rule lives in the services. Names are
unique across the project so drf-spectacular's components never clash.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import Role
from accounts.selectors.orgs import InviteStatus, invite_status


class InviteStatusField(serializers.Field):
    """An invite's status (pending, accepted, expired, revoked), computed from its timestamps."""

    def __init__(self, **kwargs):
        kwargs.setdefault("source", "*")
        kwargs["read_only"] = True
        super().__init__(**kwargs)

    def to_representation(self, invite) -> str:
        return invite_status(invite)


class InviteStatusFieldSchema(OpenApiSerializerFieldExtension):
    """One named ``InviteStatusEnum`` component, referenced by every invite answer.

    Other components also have a ``status`` field with other choices; a shared component keeps
    drf-spectacular from having to invent hashed enum names for them.
    """

    target_class = InviteStatusField

    def map_serializer_field(self, auto_schema, direction):
        component = ResolvedComponent(
            name="InviteStatusEnum",
            type=ResolvedComponent.SCHEMA,
            object="InviteStatusEnum",
            schema={"type": "string", "enum": list(InviteStatus.ALL)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class OrgRefOutputSerializer(serializers.Serializer):
    """An org named inside another answer."""

    id = serializers.UUIDField()
    name = serializers.CharField()


class MemberUserOutputSerializer(serializers.Serializer):
    """The public face of a user inside member and group answers."""

    id = serializers.UUIDField()
    email = serializers.EmailField()
    display_name = serializers.CharField()


# --- orgs ---------------------------------------------------------------------------------------


class MyOrgOutputSerializer(serializers.Serializer):
    """One of the caller's orgs, with the caller's role in it (built from a Membership)."""

    id = serializers.UUIDField(source="org.id")
    name = serializers.CharField(source="org.name")
    slug = serializers.CharField(source="org.slug")
    role = serializers.ChoiceField(choices=Role.choices)
    is_active = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField(source="org.created_at")
    joined_at = serializers.DateTimeField(source="created_at")

    @extend_schema_field(serializers.BooleanField(help_text="Whether this is the caller's active org."))
    def get_is_active(self, membership) -> bool:
        return membership.user.active_org_id == membership.org_id


class OrgCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class OrgOutputSerializer(serializers.Serializer):
    """The current org, with the caller's role in it (``role`` comes from the context)."""

    id = serializers.UUIDField()
    name = serializers.CharField()
    slug = serializers.CharField()
    role = serializers.SerializerMethodField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices, allow_null=True))
    def get_role(self, org) -> str | None:
        return self.context.get("role")


class OrgUpdateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class OrgDeletionOutputSerializer(serializers.Serializer):
    job = serializers.UUIDField(help_text="Follow it on /api/v1/jobs/{id}.")


# --- members ------------------------------------------------------------------------------------


class MemberOutputSerializer(serializers.Serializer):
    user = MemberUserOutputSerializer()
    role = serializers.ChoiceField(choices=Role.choices)
    joined_at = serializers.DateTimeField(source="created_at")


class MemberUpdateInputSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


# --- invites ------------------------------------------------------------------------------------


class InviteOutputSerializer(serializers.Serializer):
    """An invite as its org's admins see it (never the token)."""

    id = serializers.UUIDField()
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)
    status = InviteStatusField()
    invited_by = MemberUserOutputSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    accepted_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class InviteCreatedOutputSerializer(InviteOutputSerializer):
    """The answer to creating an invite: the only place ``accept_url`` (with the token) appears."""

    accept_url = serializers.URLField(help_text="Contains the secret token; shown only in this answer.")


class InviteCreateInputSerializer(serializers.Serializer):
    email = serializers.EmailField(max_length=254)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)


class InvitePublicOutputSerializer(serializers.Serializer):
    """What anyone holding the token may learn about the invite."""

    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=Role.choices)
    org = OrgRefOutputSerializer(allow_null=True, help_text="null for a platform signup invitation.")
    status = InviteStatusField()
    expires_at = serializers.DateTimeField()


class InviteAcceptedOutputSerializer(serializers.Serializer):
    org = OrgRefOutputSerializer(allow_null=True)
    role = serializers.ChoiceField(choices=Role.choices, allow_null=True)


# --- groups -------------------------------------------------------------------------------------


class GroupOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    description = serializers.CharField()
    member_count = serializers.IntegerField()
    created_at = serializers.DateTimeField()


class GroupCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class GroupUpdateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)


class GroupMemberOutputSerializer(serializers.Serializer):
    user = MemberUserOutputSerializer()
    added_at = serializers.DateTimeField(source="created_at")


class GroupMemberAddInputSerializer(serializers.Serializer):
    user_id = serializers.UUIDField()
