"""Django admin for jobs and stored idempotent answers."""

from django.contrib import admin

from core.models import IdempotencyRecord, Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "percent", "org", "actor", "created_at", "finished_at"]
    list_filter = ["status", "kind"]
    search_fields = ["id", "kind", "message", "org__name", "actor__email"]
    list_select_related = ["org", "actor"]
    readonly_fields = [f.name for f in Job._meta.fields]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["key", "method", "path", "state", "response_status", "created_at", "expires_at"]
    list_filter = ["state", "method"]
    search_fields = ["key", "path"]
    readonly_fields = [f.name for f in IdempotencyRecord._meta.fields]

    def has_add_permission(self, request):
        return False
