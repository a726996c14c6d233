"""Django admin of `knowledge`, for platform ops staff.

KBs: settings editable (audited); an embedding change made here does not build an index, so
embedding fields are read-only here (use the API, which goes through ``kb_update``). Documents:
filtered by state and file type, with a "retry failed" action that goes through the service (new
job, audit row) and a "re-queue stale" one for documents whose worker died. Chunks, index versions
and vectors are read-only history.
"""

from __future__ import annotations

from django.contrib import admin, messages

from accounts.admin import AuditedAdminMixin, HistoryAdmin
from core.errors import ApplicationError
from knowledge.models import Chunk, Document, IndexVersion, KnowledgeBase
from knowledge.services.documents import document_retry


class KnowledgeBaseAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "org", "kind", "embedding_backend", "embedding_model", "language", "created_at"]
    list_filter = ["kind", "embedding_backend", "language"]
    search_fields = ["name", "org__name", "id"]
    list_select_related = ["org"]
    raw_id_fields = ["org", "agent", "created_by"]
    readonly_fields = [
        "id",
        "embedding_backend",
        "embedding_model",
        "active_index",
        "created_at",
        "updated_at",
    ]


class DocumentAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = [
        "title",
        "kb",
        "org",
        "status",
        "file_type",
        "attempts",
        "chunk_count",
        "embedded",
        "updated_at",
    ]
    list_filter = ["status", "file_type", "source", "embedded"]
    search_fields = ["title", "filename", "id", "kb__name", "org__name", "error_code"]
    list_select_related = ["kb", "org"]
    raw_id_fields = ["org", "kb", "job", "created_by"]
    readonly_fields = [
        "id", "content_hash", "size_bytes", "file_type", "status", "attempts", "lease_expires_at",
        "error_code", "error_message", "chunk_count", "token_count", "embedded", "job", "created_at",
        "updated_at", "processed_at",
    ]  # fmt: skip
    actions = ["retry_failed", "requeue_stale"]

    @admin.action(description="Retry the selected failed documents")
    def retry_failed(self, request, queryset):
        done, skipped = 0, 0
        for document in queryset.filter(status=Document.Status.FAILED).select_related("org", "kb"):
            try:
                document_retry(document=document, actor=request.user)
                done += 1
            except ApplicationError as exc:
                self.message_user(request, f"{document}: {exc.message}", messages.ERROR)
        skipped = queryset.exclude(status=Document.Status.FAILED).count()
        self.message_user(
            request, f"Re-queued {done} document(s); {skipped} were not failed.", messages.SUCCESS
        )

    @admin.action(description="Hand stale documents (dead worker, never picked up) to a worker again")
    def requeue_stale(self, request, queryset):
        from knowledge.services.ingest import requeue_expired
        from knowledge.tasks import ingest_document

        ids = set(requeue_expired())
        chosen = [str(pk) for pk in queryset.values_list("pk", flat=True) if str(pk) in ids]
        for document_id in chosen:
            ingest_document.delay(document_id)
        self.message_user(request, f"Re-queued {len(chosen)} stale document(s).", messages.SUCCESS)


class ChunkAdmin(HistoryAdmin):
    list_display = ["document", "seq", "page", "section", "token_count", "created_at"]
    search_fields = ["document__title", "id"]
    list_select_related = ["document"]
    raw_id_fields = ["org", "kb", "document"]


class IndexVersionAdmin(HistoryAdmin):
    list_display = ["kb", "backend", "model", "dimension", "status", "revision", "created_at", "activated_at"]
    list_filter = ["status", "backend"]
    search_fields = ["kb__name", "model", "id"]
    list_select_related = ["kb"]


admin.site.register(KnowledgeBase, KnowledgeBaseAdmin)
admin.site.register(Document, DocumentAdmin)
admin.site.register(Chunk, ChunkAdmin)
admin.site.register(IndexVersion, IndexVersionAdmin)
