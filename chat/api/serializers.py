"""Serializers of the chat endpoints: input shapes (types and ranges only) and output shapes.

Business rules (whose conversation, which agent, index ranges) live in ``chat.services``.
"""

from __future__ import annotations

from rest_framework import serializers

from chat.models import Conversation, Message, MessageFeedback

from .fast_input import FastInputSerializer


class ConversationListFilterSerializer(serializers.Serializer):
    """Query parameters of the conversation list."""

    archived = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="true: archived only; false: not archived."
    )
    agent = serializers.UUIDField(required=False, help_text="Only conversations with this agent.")
    q = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Part of the title."
    )


class ConversationCreateInputSerializer(serializers.Serializer):
    agent = serializers.CharField(
        required=False, allow_null=True, max_length=100, help_text="An agent id or key you may see."
    )
    title = serializers.CharField(required=False, allow_blank=True, max_length=200)


class ConversationUpdateInputSerializer(serializers.Serializer):
    title = serializers.CharField(required=False, allow_blank=True, max_length=200)
    archived = serializers.BooleanField(required=False)


class ConversationOutputSerializer(serializers.ModelSerializer):
    agent = serializers.UUIDField(source="agent_id", allow_null=True, read_only=True)
    agent_key = serializers.SerializerMethodField()
    archived = serializers.SerializerMethodField()
    branched_from = serializers.UUIDField(source="branched_from_id", allow_null=True, read_only=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "title",
            "title_generated",
            "agent",
            "agent_key",
            "channel",
            "archived",
            "archived_at",
            "branched_from",
            "branch_label",
            "branch_point",
            "message_count",
            "last_message_at",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_agent_key(self, obj: Conversation) -> str | None:
        return obj.agent.key if obj.agent_id and obj.agent is not None else None

    def get_archived(self, obj: Conversation) -> bool:
        return obj.archived_at is not None


class MessageOutputSerializer(serializers.Serializer):
    """A message as ``chat.selectors.messages.message_dict`` shapes it."""

    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    index = serializers.IntegerField()
    role = serializers.CharField(help_text="user, assistant, system or tool.")
    content = serializers.CharField(allow_blank=True)
    parts = serializers.ListField(child=serializers.DictField())
    status = serializers.ChoiceField(choices=Message.Status.choices)
    finish_reason = serializers.CharField(allow_blank=True)
    error = serializers.DictField(allow_null=True)
    citations = serializers.ListField(child=serializers.DictField())
    model = serializers.CharField(allow_blank=True)
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()
    usage_estimated = serializers.BooleanField()
    run_id = serializers.UUIDField(allow_null=True)
    reply_to = serializers.UUIDField(allow_null=True)
    last_seq = serializers.IntegerField(help_text="Sequence number of the turn's last logged event.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class MessageHistoryFilterSerializer(serializers.Serializer):
    cursor = serializers.CharField(
        required=False, allow_blank=True, max_length=500, help_text="next_cursor of a page."
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=200, default=50)


class MessageHistoryOutputSerializer(serializers.Serializer):
    messages = MessageOutputSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True, help_text="null at the end of the history.")
    total = serializers.IntegerField()
    reset = serializers.BooleanField(
        help_text=(
            "true when the cursor no longer fits the history (past its end, or reset): messages from "
            "the start."
        )
    )


class MessageInputSerializer(serializers.Serializer):
    role = serializers.CharField(max_length=16, help_text="user, assistant, system or tool (400 otherwise).")
    content = serializers.JSONField(
        required=False, help_text="Text, or a list of content parts ({type: text, text}, images, …)."
    )
    parts = serializers.ListField(child=serializers.DictField(), required=False)


class MessageAppendInputSerializer(serializers.Serializer):
    messages = MessageInputSerializer(many=True, help_text="1 to 100 messages, appended in order.")


class MessageListOutputSerializer(serializers.Serializer):
    messages = MessageOutputSerializer(many=True)


class BranchInputSerializer(serializers.Serializer):
    up_to_index = serializers.IntegerField(
        help_text="Copy messages [0, up_to_index); 1 ≤ up_to_index ≤ messages."
    )
    label = serializers.CharField(required=False, allow_blank=True, max_length=100)


class ChatTurnInputSerializer(FastInputSerializer):
    """``POST /api/v1/chat``."""

    agent = serializers.CharField(max_length=100, help_text="An agent id or key you may see.")
    message = serializers.CharField(max_length=100_000, trim_whitespace=False)
    conversation_id = serializers.UUIDField(required=False, allow_null=True)
    on_disconnect = serializers.ChoiceField(
        choices=["continue", "cancel"],
        default="continue",
        help_text="What the client going away does: the turn continues (default) or is cancelled.",
    )


class FeedbackInputSerializer(serializers.Serializer):
    rating = serializers.ChoiceField(choices=MessageFeedback.Rating.choices)
    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class FeedbackOutputSerializer(serializers.ModelSerializer):
    message_id = serializers.UUIDField(read_only=True)

    class Meta:
        model = MessageFeedback
        fields = ["id", "message_id", "rating", "comment", "created_at", "updated_at"]
        read_only_fields = fields


class TurnCancelOutputSerializer(serializers.Serializer):
    message = MessageOutputSerializer()
