"""Input and output shapes of the audit log (activity) and security-event endpoints.

Query parameters are validated by serializers too, so a bad ``from`` or ``actor`` answers
400 ERR_VALIDATION naming the field, never a 500 from the database.
"""

from __future__ import annotations

import re

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import AuditLog, SecurityEvent
from accounts.selectors.audit import AGGREGATE_DIMENSIONS, ActivityFilters

# "2024-05-01T10:00:00 02:00": a "+" offset that arrived unencoded in a query string.
_UNENCODED_PLUS_OFFSET = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$")


class QueryDateTimeField(serializers.DateTimeField):
    """An ISO 8601 instant from a query string; naive values are taken as UTC."""

    def to_internal_value(self, value):
        if isinstance(value, str):
            value = _UNENCODED_PLUS_OFFSET.sub(r"\1+\2", value.strip())
        return super().to_internal_value(value)


def _add_range_fields(fields: dict, noun: str) -> dict:
    """``from`` and ``to`` are Python keywords, so they are added here rather than declared."""
    fields["from"] = QueryDateTimeField(
        required=False, help_text=f"ISO 8601 instant: {noun} created at or after it."
    )
    fields["to"] = QueryDateTimeField(
        required=False, help_text=f"ISO 8601 instant: {noun} created before it."
    )
    return fields


def _check_range(attrs: dict) -> None:
    start, end = attrs.get("from"), attrs.get("to")
    if start is not None and end is not None and start > end:
        raise serializers.ValidationError({"to": ["Must not be before 'from'."]})


class ActivityFilterInputSerializer(serializers.Serializer):
    """Query filters shared by the activity list, aggregate and CSV export."""

    actor = serializers.UUIDField(required=False, help_text="Only rows this user (id) did.")
    action = serializers.CharField(
        required=False,
        max_length=64,
        help_text='Exact action ("member.role_changed"), or a prefix ending in ".*" ("api_key.*").',
    )
    entity = serializers.CharField(
        required=False,
        max_length=130,
        help_text='Entity type ("apikey"), or type and id ("apikey:<id>").',
    )

    def get_fields(self):
        return _add_range_fields(super().get_fields(), "rows")

    def validate_entity(self, value: str) -> str:
        entity_type, _, entity_id = value.partition(":")
        if not entity_type or len(entity_type) > 64 or len(entity_id) > 64:
            raise serializers.ValidationError('Use "type" or "type:id" (each at most 64 characters).')
        return value

    def validate(self, attrs):
        _check_range(attrs)
        return attrs

    def to_filters(self) -> ActivityFilters:
        """The validated query as the selector's filter object."""
        data = self.validated_data
        entity_type, _, entity_id = data.get("entity", "").partition(":")
        return ActivityFilters(
            actor_id=data.get("actor"),
            action=data.get("action", ""),
            entity_type=entity_type,
            entity_id=entity_id,
            created_from=data.get("from"),
            created_to=data.get("to"),
        )


class ActivityAggregateInputSerializer(ActivityFilterInputSerializer):
    """The activity filters plus the dimension to group by."""

    group_by = serializers.ChoiceField(choices=AGGREGATE_DIMENSIONS, help_text="The dimension to count by.")


class ActivityActorOutputSerializer(serializers.Serializer):
    """Who did it: the user id (null once the account is gone) and the email at the time."""

    id = serializers.UUIDField(allow_null=True)
    email = serializers.CharField()


class ActivityEntryOutputSerializer(serializers.ModelSerializer):
    """One audit row."""

    actor = serializers.SerializerMethodField()
    api_key = serializers.UUIDField(source="api_key_id", allow_null=True, read_only=True)
    before = serializers.JSONField(read_only=True, allow_null=True)
    after = serializers.JSONField(read_only=True, allow_null=True)
    changes = serializers.JSONField(read_only=True, help_text="field → [before, after]")

    class Meta:
        model = AuditLog
        fields = [
            "id",
            "created_at",
            "action",
            "entity_type",
            "entity_id",
            "actor",
            "api_key",
            "before",
            "after",
            "changes",
            "ip",
            "user_agent",
            "request_id",
        ]
        read_only_fields = fields

    @extend_schema_field(ActivityActorOutputSerializer(allow_null=True))
    def get_actor(self, entry: AuditLog) -> dict | None:
        # actor_email is stored on the row: no join, and it survives the user's deletion.
        if entry.actor_id is None and not entry.actor_email:
            return None
        return {"id": entry.actor_id, "email": entry.actor_email}


class ActivityAggregateItemOutputSerializer(serializers.Serializer):
    """One group: its key (null for actions without a user), a readable label and the count."""

    key = serializers.CharField(allow_null=True)
    label = serializers.CharField(allow_null=True)
    count = serializers.IntegerField()


class ActivityAggregateOutputSerializer(serializers.Serializer):
    """Counts of audit rows per group."""

    group_by = serializers.ChoiceField(choices=AGGREGATE_DIMENSIONS)
    items = ActivityAggregateItemOutputSerializer(many=True)


class SecurityEventKindField(serializers.ChoiceField):
    """A security event's kind (``SecurityEvent.Kind``)."""

    def __init__(self, **kwargs):
        super().__init__(choices=SecurityEvent.Kind.choices, **kwargs)


class SecurityEventKindFieldExtension(OpenApiSerializerFieldExtension):
    """Names the kind enum ``SecurityEventKindEnum`` in the schema.

    Without it, drf-spectacular's enum naming sees two choice sets behind properties called
    ``kind`` (API key kinds and these) and warns about the collision.
    """

    target_class = SecurityEventKindField

    def map_serializer_field(self, auto_schema, direction):
        component = ResolvedComponent(
            name="SecurityEventKindEnum",
            type=ResolvedComponent.SCHEMA,
            object="SecurityEventKindEnum",
            schema={
                "type": "string",
                "enum": list(SecurityEvent.Kind.values),
                "description": "\n".join(
                    f"* `{value}` - {label}" for value, label in SecurityEvent.Kind.choices
                ),
            },
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class SecurityEventFilterInputSerializer(serializers.Serializer):
    """Query filters of the security-event list."""

    kind = SecurityEventKindField(required=False, help_text="Only events of this kind.")

    def get_fields(self):
        return _add_range_fields(super().get_fields(), "events")

    def validate(self, attrs):
        _check_range(attrs)
        return attrs


class SecurityEventUserOutputSerializer(serializers.Serializer):
    """The user a security event concerns."""

    id = serializers.UUIDField()
    email = serializers.EmailField()


class SecurityEventOutputSerializer(serializers.ModelSerializer):
    """One security event."""

    kind = SecurityEventKindField(read_only=True)
    user = serializers.SerializerMethodField()
    api_key = serializers.UUIDField(source="api_key_id", allow_null=True, read_only=True)
    details = serializers.JSONField(read_only=True)

    class Meta:
        model = SecurityEvent
        fields = [
            "id",
            "created_at",
            "kind",
            "user",
            "api_key",
            "identifier",
            "ip",
            "user_agent",
            "path",
            "details",
            "request_id",
        ]
        read_only_fields = fields

    @extend_schema_field(SecurityEventUserOutputSerializer(allow_null=True))
    def get_user(self, event: SecurityEvent) -> dict | None:
        if event.user is None:
            return None
        return {"id": event.user.pk, "email": event.user.email}
