"""Django admin of `knowledge.memory` for platform ops staff: look, filter, search, delete.

Rows are read-only here: a memory document's text must be re-ingested when it changes and an
entity's normalised name and alias index must follow its name, which only the services do. Deletes
go through the services too, so the knowledge documents go with them and the org's activity log
records who removed what.
"""

from __future__ import annotations

from django.contrib import admin

from .models import Entity, EpisodicSummary, MemoryDocument, Relation
from .services.documents import memory_document_delete
from .services.graph import entity_delete, relation_delete


class ReadOnlyAdmin(admin.ModelAdmin):
    """No adds or edits; deletes (when allowed) through ``delete_one``."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_one(self, request, obj) -> None:
        obj.delete()

    def delete_model(self, request, obj):
        self.delete_one(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_one(request, obj)


@admin.register(MemoryDocument)
class MemoryDocumentAdmin(ReadOnlyAdmin):
    list_display = ("path", "agent", "user", "org", "content_hash", "updated_at")
    list_filter = ("org", "agent")
    search_fields = ("path", "agent__name", "agent__key", "user__email", "org__name")
    list_select_related = ("agent", "user", "org")
    raw_id_fields = ("agent", "user", "document", "created_by")

    def delete_one(self, request, obj) -> None:
        memory_document_delete(memory_document=obj, actor=request.user)


class RelationInline(admin.TabularInline):
    model = Relation
    fk_name = "source"
    fields = ("type", "target", "weight", "description")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Entity)
class EntityAdmin(ReadOnlyAdmin):
    list_display = ("name", "type", "agent", "org", "updated_at")
    list_filter = ("type", "org")
    search_fields = ("name", "normalized_name", "agent__name", "org__name")
    list_select_related = ("agent", "org")
    raw_id_fields = ("agent",)
    inlines = [RelationInline]

    def delete_one(self, request, obj) -> None:
        entity_delete(entity=obj, actor=request.user)


@admin.register(Relation)
class RelationAdmin(ReadOnlyAdmin):
    list_display = ("source", "type", "target", "weight", "agent", "org", "created_at")
    list_filter = ("type", "org")
    search_fields = ("type", "source__name", "target__name", "agent__name")
    list_select_related = ("source", "target", "agent", "org")
    raw_id_fields = ("agent", "source", "target")

    def delete_one(self, request, obj) -> None:
        relation_delete(relation=obj, actor=request.user)


@admin.register(EpisodicSummary)
class EpisodicSummaryAdmin(ReadOnlyAdmin):
    list_display = (
        "conversation_id",
        "agent",
        "user",
        "org",
        "first_index",
        "last_index",
        "last_message_at",
        "error",
    )
    list_filter = ("org", "agent")
    search_fields = ("conversation_id", "summary", "agent__name", "user__email")
    list_select_related = ("agent", "user", "org")
    raw_id_fields = ("agent", "user", "document")
