"""Django admin of `chat`, for platform ops staff.

Conversations are searchable by the user's email, the agent's key and the title, with their
messages inline and read-only; admin edits of a conversation (title, archive) leave an audit row in
the org's activity log. Messages, feedback and transcripts are records of what happened: listed
with useful columns, never added or edited here (superusers may delete).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet

from accounts.admin import AuditedAdminMixin, HistoryAdmin
from chat.models import Conversation, Message, MessageFeedback, Transcript
from chat.services.conversations import conversation_update

PREVIEW_CHARS = 80


def _preview(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


class ArchivedFilter(admin.SimpleListFilter):
    title = "archived"
    parameter_name = "archived"

    def lookups(self, request, model_admin):
        return [("yes", "Archived"), ("no", "Not archived")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(archived_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(archived_at__isnull=True)
        return queryset


class MessageInline(admin.TabularInline):
    """The conversation's messages in order, read-only."""

    model = Message
    fk_name = "conversation"
    fields = [
        "index",
        "role",
        "status",
        "content_preview",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["index"]
    extra = 0
    show_change_link = True
    can_delete = False

    @admin.display(description="content")
    def content_preview(self, obj: Message) -> str:
        return _preview(obj.content)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Conversation)
class ConversationAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "title",
        "user",
        "org",
        "agent",
        "channel",
        "message_count",
        "is_archived",
        "last_message_at",
        "created_at",
    ]
    list_filter = [ArchivedFilter, "channel", "title_generated", "created_at"]
    search_fields = ["=id", "user__email", "agent__key", "title"]
    list_select_related = ["user", "org", "agent"]
    raw_id_fields = ["org", "user", "agent", "branched_from"]
    readonly_fields = [
        "id",
        "org",
        "user",
        "channel",
        "branched_from",
        "branch_label",
        "branch_point",
        "message_count",
        "last_message_at",
        "created_at",
        "updated_at",
    ]
    fields = [
        "id",
        "org",
        "user",
        "agent",
        "title",
        "title_generated",
        "channel",
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
    inlines = [MessageInline]
    date_hierarchy = "created_at"
    show_full_result_count = False
    actions = ["archive", "unarchive"]

    @admin.display(boolean=True, description="archived", ordering="archived_at")
    def is_archived(self, obj: Conversation) -> bool:
        return obj.archived_at is not None

    def has_add_permission(self, request):
        return False  # conversations belong to a user: they start in the product, not here

    def _set_archived(self, request, queryset, archived: bool) -> None:
        done = 0
        for conversation in queryset:
            conversation_update(conversation=conversation, actor=request.user, archived=archived)
            done += 1
        verb = "Archived" if archived else "Unarchived"
        self.message_user(request, f"{verb} {done} conversation(s).", messages.SUCCESS)

    @admin.action(description="Archive the selected conversations")
    def archive(self, request, queryset):
        self._set_archived(request, queryset, True)

    @admin.action(description="Unarchive the selected conversations")
    def unarchive(self, request, queryset):
        self._set_archived(request, queryset, False)


@admin.register(Message)
class MessageAdmin(HistoryAdmin):
    list_display = [
        "id",
        "conversation",
        "index",
        "role",
        "status",
        "finish_reason",
        "content_preview",
        "model",
        "prompt_tokens",
        "completion_tokens",
        "created_at",
    ]
    list_filter = ["role", "status", "finish_reason", "created_at"]
    search_fields = ["=id", "=conversation__id", "conversation__user__email", "model"]
    list_select_related = ["conversation"]
    raw_id_fields = ["conversation", "run", "reply_to"]
    date_hierarchy = "created_at"

    @admin.display(description="content")
    def content_preview(self, obj: Message) -> str:
        return _preview(obj.content)


@admin.register(MessageFeedback)
class MessageFeedbackAdmin(HistoryAdmin):
    list_display = ["id", "rating", "message", "user", "org", "comment_preview", "created_at", "updated_at"]
    list_filter = ["rating", "created_at"]
    search_fields = ["=id", "=message__id", "user__email", "comment"]
    list_select_related = ["message", "user", "org"]
    raw_id_fields = ["message", "user", "org"]

    @admin.display(description="comment")
    def comment_preview(self, obj: MessageFeedback) -> str:
        return _preview(obj.comment)


@admin.register(Transcript)
class TranscriptAdmin(HistoryAdmin):
    list_display = [
        "id",
        "filename",
        "user",
        "org",
        "content_type",
        "size_bytes",
        "duration_seconds",
        "language",
        "model",
        "created_at",
    ]
    list_filter = ["language", "content_type", "created_at"]
    search_fields = ["=id", "filename", "user__email", "org__name"]
    list_select_related = ["user", "org"]
    raw_id_fields = ["user", "org"]
