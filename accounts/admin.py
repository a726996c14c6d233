"""Django admin for every `accounts` model, for platform ops staff.

Principles:
- history (audit log, security events, the per-key request log) is read-only; only superusers may
  delete it (retention clean-up);
- secrets never show: API key and invite hashes are excluded from every form;
- writes that have a rule of their own go through the services that guard it (the last OWNER,
  key revocation, waitlist decisions, the signup mode, invite revocation), and every other admin
  write leaves an audit row, so the org's activity log shows what staff changed.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db import models
from django.utils import timezone

from accounts.keys import KIND_PREFIXES
from accounts.models import (
    ApiKey,
    ApiKeyUsage,
    AuditLog,
    Group,
    GroupMembership,
    Invite,
    Membership,
    Organization,
    PlatformSettings,
    Role,
    SecurityEvent,
    User,
    WaitlistEntry,
)
from accounts.services.audit import audit_record
from core.errors import ApplicationError

# Fields whose values never go into an audit row.
_SECRET_MARKERS = ("password", "hash", "token", "secret")


def _org_of(obj: models.Model) -> Organization | None:
    """The tenant an admin write belongs to (None for platform-level rows such as users)."""
    if isinstance(obj, Organization):
        return obj
    if isinstance(obj, GroupMembership):
        return obj.group.org
    return getattr(obj, "org", None)


def _snapshot(obj: models.Model, names: list[str] | None = None) -> dict[str, Any]:
    """Plain values of ``names`` (default: every concrete field), secrets and many-to-many left out."""
    fields = (
        list(obj._meta.concrete_fields)
        if names is None
        else [f for f in (_field(obj, n) for n in names) if f is not None and f.concrete]
    )
    return {
        field.name: field.value_from_object(obj)
        for field in fields
        if not field.many_to_many and not any(marker in field.name for marker in _SECRET_MARKERS)
    }


def _field(obj: models.Model, name: str):
    try:
        return obj._meta.get_field(name)
    except FieldDoesNotExist:
        return None


def _audit_admin_write(
    request, obj: models.Model, verb: str, *, before=None, after=None, org: Organization | None = None
) -> None:
    audit_record(
        org=org if org is not None else _org_of(obj),
        actor=request.user,
        action=f"{obj._meta.model_name}.admin_{verb}",
        entity=obj,
        before=before,
        after=after,
    )


class AuditedAdminMixin:
    """Admin saves and deletes write an audit row (``<model>.admin_created|updated|deleted``).

    Other apps' admins reuse it and override the three hooks: which org a row belongs to, how a
    row is snapshotted (which values are secret), and which form fields count as changes.
    """

    def audit_org(self, obj: models.Model) -> Organization | None:
        return _org_of(obj)

    def audit_snapshot(self, obj: models.Model, names: list[str] | None = None) -> dict[str, Any]:
        return _snapshot(obj, names)

    def audited_changes(self, form) -> list[str]:
        return list(form.changed_data)

    def _audit(self, request, obj: models.Model, verb: str, *, before=None, after=None) -> None:
        _audit_admin_write(request, obj, verb, before=before, after=after, org=self.audit_org(obj))

    def save_model(self, request, obj, form, change):
        names = self.audited_changes(form)
        before = self.audit_snapshot(type(obj)._default_manager.get(pk=obj.pk), names) if change else None
        super().save_model(request, obj, form, change)
        if change and not names:
            return
        after = self.audit_snapshot(obj, names) if change else self.audit_snapshot(obj)
        self._audit(request, obj, "updated" if change else "created", before=before, after=after)

    def delete_model(self, request, obj):
        self._audit(request, obj, "deleted", before=self.audit_snapshot(obj))
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self._audit(request, obj, "deleted", before=self.audit_snapshot(obj))
        super().delete_queryset(request, queryset)


class HistoryAdmin(admin.ModelAdmin):
    """Rows that record what happened: nobody adds or edits them; superusers may delete."""

    show_full_result_count = False  # these tables grow without bound: no COUNT(*) per page

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        user = request.user
        return bool(user.is_active and user.is_staff and user.is_superuser)


def _report(modeladmin, request, done: int, verb: str, failures: list[str]) -> None:
    """One success line and one line per row a service refused."""
    if done:
        modeladmin.message_user(request, f"{verb} {done} row(s).", messages.SUCCESS)
    for failure in failures:
        modeladmin.message_user(request, failure, messages.ERROR)


# --- Users, organisations, memberships -----------------------------------------------------------


class MembershipInline(admin.TabularInline):
    """Memberships shown on a user or an org; changed on the membership page, where rules apply."""

    model = Membership
    extra = 0
    fields = ["org", "user", "role", "created_at"]
    readonly_fields = fields
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(User)
class UserAdmin(AuditedAdminMixin, BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "display_name", "is_active", "is_staff", "date_joined", "last_login"]
    list_filter = ["is_active", "is_staff", "is_superuser"]
    search_fields = ["email", "display_name"]
    readonly_fields = ["date_joined", "last_login"]
    inlines = [MembershipInline]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("display_name", "avatar_url", "language", "timezone", "active_org")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)
    autocomplete_fields = ["active_org"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}


@admin.register(Organization)
class OrganizationAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "slug", "created_at", "deletion_requested_at"]
    list_filter = [("deletion_requested_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ["created_at", "updated_at", "deletion_requested_at"]
    date_hierarchy = "created_at"
    inlines = [MembershipInline]


class MembershipAdminForm(forms.ModelForm):
    """Refuses to demote an org's last OWNER (the rule the API enforces with a 409)."""

    class Meta:
        model = Membership
        fields = ["org", "user", "role"]

    def clean(self):
        cleaned = super().clean()
        instance = self.instance
        if (
            instance.pk is not None
            and instance.role == Role.OWNER
            and cleaned.get("role") not in (None, Role.OWNER)
            and not Membership.objects.filter(org_id=instance.org_id, role=Role.OWNER)
            .exclude(pk=instance.pk)
            .exists()
        ):
            raise ValidationError("This is the org's last owner; make someone else an owner first.")
        return cleaned


def _is_last_owner(membership: Membership) -> bool:
    return (
        membership.role == Role.OWNER
        and not Membership.objects.filter(org_id=membership.org_id, role=Role.OWNER)
        .exclude(pk=membership.pk)
        .exists()
    )


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Role changes and removals go through the org services (last-owner rule, audit rows)."""

    form = MembershipAdminForm
    list_display = ["user", "org", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "org__name", "org__slug"]
    autocomplete_fields = ["org", "user"]
    list_select_related = ["user", "org"]
    date_hierarchy = "created_at"

    def get_readonly_fields(self, request, obj=None):
        return ["org", "user", "created_at"] if obj is not None else ["created_at"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # one at a time, so the last-owner check is per row
        return actions

    def has_delete_permission(self, request, obj=None):
        if obj is not None and _is_last_owner(obj):
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            _audit_admin_write(request, obj, "created", after={"user": str(obj.user_id), "role": obj.role})
            return
        if "role" in form.changed_data:
            from accounts.services.orgs import member_update_role

            # Staff act with the platform's authority, which includes touching OWNERs.
            member_update_role(
                org=obj.org, actor=request.user, actor_role=Role.OWNER, user_id=obj.user_id, role=obj.role
            )

    def delete_model(self, request, obj):
        from accounts.services.orgs import member_remove

        member_remove(org=obj.org, actor=request.user, actor_role=Role.OWNER, user_id=obj.user_id)


# --- Groups ----------------------------------------------------------------------------------------


class GroupMembershipInlineFormSet(forms.BaseInlineFormSet):
    """A group only holds members of its own org."""

    def clean(self):
        super().clean()
        org_id = getattr(self.instance, "org_id", None)
        if org_id is None:
            return  # the group form itself is invalid; its errors are shown
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or form.cleaned_data.get("DELETE"):
                continue
            user = form.cleaned_data.get("user")
            if user is not None and not Membership.objects.filter(org_id=org_id, user=user).exists():
                form.add_error("user", "Not a member of this group's organisation.")


class GroupMembershipInline(admin.TabularInline):
    model = GroupMembership
    formset = GroupMembershipInlineFormSet
    extra = 0
    fields = ["user", "created_at"]
    readonly_fields = ["created_at"]
    autocomplete_fields = ["user"]


@admin.register(Group)
class GroupAdmin(AuditedAdminMixin, admin.ModelAdmin):
    list_display = ["name", "org", "created_at"]
    search_fields = ["name", "org__name", "org__slug"]
    list_select_related = ["org"]
    autocomplete_fields = ["org"]
    readonly_fields = ["created_at"]
    inlines = [GroupMembershipInline]

    def save_formset(self, request, form, formset, change):
        """Group members added or removed in the inline are audited like the API's."""
        if formset.model is not GroupMembership:
            return super().save_formset(request, form, formset, change)
        instances = formset.save(commit=False)
        group = form.instance
        for entry in formset.deleted_objects:
            audit_record(
                org=group.org,
                actor=request.user,
                action="group.member_removed",
                entity=group,
                before={"user": str(entry.user_id), "email": entry.user.email},
            )
            entry.delete()
        for entry in instances:
            adding = entry._state.adding
            entry.save()
            if adding:
                audit_record(
                    org=group.org,
                    actor=request.user,
                    action="group.member_added",
                    entity=group,
                    after={"user": str(entry.user_id), "email": entry.user.email},
                )
        formset.save_m2m()


@admin.register(GroupMembership)
class GroupMembershipAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Browse who is in which group; add people on the group's page (it checks the org)."""

    list_display = ["user", "group", "org_name", "created_at"]
    search_fields = ["user__email", "group__name", "group__org__name"]
    list_select_related = ["user", "group__org"]
    list_filter = [("group__org", admin.RelatedOnlyFieldListFilter)]
    readonly_fields = ["group", "user", "created_at"]

    @admin.display(description="organisation", ordering="group__org__name")
    def org_name(self, entry: GroupMembership) -> str:
        return entry.group.org.name

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


# --- Invites, signup settings, waitlist -------------------------------------------------------------


class InviteStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [
            ("pending", "Pending"),
            ("accepted", "Accepted"),
            ("revoked", "Revoked"),
            ("expired", "Expired"),
        ]

    def queryset(self, request, queryset):
        now = timezone.now()
        open_ = {"accepted_at__isnull": True, "revoked_at__isnull": True}
        if self.value() == "pending":
            return queryset.filter(**open_, expires_at__gt=now)
        if self.value() == "accepted":
            return queryset.filter(accepted_at__isnull=False)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(**open_, expires_at__lte=now)
        return queryset


@admin.register(Invite)
class InviteAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Invites are created by the API (which emails the token); here they are seen and revoked."""

    list_display = [
        "email",
        "org",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "revoked_at",
    ]
    list_filter = [InviteStatusFilter, "role"]
    search_fields = ["email", "org__name", "org__slug", "invited_by__email"]
    list_select_related = ["org", "invited_by"]
    exclude = ["token_hash"]
    readonly_fields = [
        "org",
        "email",
        "role",
        "invited_by",
        "created_at",
        "expires_at",
        "accepted_at",
        "accepted_by",
        "revoked_at",
    ]
    date_hierarchy = "created_at"
    actions = ["revoke_invites"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.action(description="Revoke selected invites", permissions=["revoke"])
    def revoke_invites(self, request, queryset):
        from accounts.services.invites import invite_revoke

        done, failures = 0, []
        for invite in queryset:
            try:
                invite_revoke(invite=invite, actor=request.user)
                done += 1
            except ApplicationError as exc:
                failures.append(f"{invite.email}: {exc.message}")
        _report(self, request, done, "Revoked", failures)

    def has_revoke_permission(self, request):
        return request.user.has_perm("accounts.change_invite")


@admin.register(PlatformSettings)
class PlatformSettingsAdmin(admin.ModelAdmin):
    """The single settings row: the signup mode is changed through its (audited) service."""

    list_display = ["__str__", "signup_mode", "bootstrapped_at", "updated_at"]
    fields = ["signup_mode", "bootstrapped_at", "updated_at"]
    readonly_fields = ["bootstrapped_at", "updated_at"]

    def has_add_permission(self, request):
        return not PlatformSettings.objects.exists() and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        from accounts.services.signup import signup_settings_update

        saved = signup_settings_update(actor=request.user, signup_mode=obj.signup_mode)
        obj.pk, obj.updated_at, obj.bootstrapped_at = saved.pk, saved.updated_at, saved.bootstrapped_at
        obj._state.adding = False


@admin.register(WaitlistEntry)
class WaitlistEntryAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Decisions go through the waitlist services: approving emails a signup invite."""

    list_display = ["email", "name", "status", "created_at", "decided_at", "decided_by"]
    list_filter = ["status"]
    search_fields = ["email", "name"]
    list_select_related = ["decided_by"]
    readonly_fields = ["email", "name", "note", "status", "created_at", "decided_at", "decided_by", "invite"]
    date_hierarchy = "created_at"
    actions = ["approve_entries", "reject_entries"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_decide_permission(self, request):
        return request.user.has_perm("accounts.change_waitlistentry")

    def _decide(self, request, queryset, decision: str) -> None:
        from accounts.services import signup

        decide = getattr(signup, f"waitlist_{decision}")
        done, failures = 0, []
        for entry in queryset:
            try:
                decide(entry_id=entry.pk, actor=request.user)
                done += 1
            except ApplicationError as exc:
                failures.append(f"{entry.email}: {exc.message}")
        _report(self, request, done, "Approved" if decision == "approve" else "Rejected", failures)

    @admin.action(description="Approve selected entries (emails a signup invite)", permissions=["decide"])
    def approve_entries(self, request, queryset):
        self._decide(request, queryset, "approve")

    @admin.action(description="Reject selected entries", permissions=["decide"])
    def reject_entries(self, request, queryset):
        self._decide(request, queryset, "reject")


# --- API keys and their request log ---------------------------------------------------------------


class RevokedFilter(admin.SimpleListFilter):
    title = "revoked"
    parameter_name = "revoked"

    def lookups(self, request, model_admin):
        return [("yes", "Revoked"), ("no", "Not revoked")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(revoked_at__isnull=True)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Keys are seen (never their hashes) and revoked here; they are created through the API."""

    list_display = [
        "name",
        "prefix",
        "kind",
        "org",
        "user",
        "role",
        "is_active",
        "revoked_at",
        "expires_at",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["kind", "is_active", RevokedFilter, "role"]
    search_fields = ["name", "public_id", "org__name", "org__slug", "user__email"]
    list_select_related = ["org", "user"]
    exclude = ["secret_hash", "previous_secret_hash"]
    date_hierarchy = "created_at"
    actions = ["revoke_keys"]

    @admin.display(description="prefix", ordering="public_id")
    def prefix(self, key: ApiKey) -> str:
        return f"{KIND_PREFIXES.get(key.kind, key.kind)}_{key.public_id}"

    def get_readonly_fields(self, request, obj=None):
        return ["prefix", *(f.name for f in ApiKey._meta.concrete_fields if f.name not in self.exclude)]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return bool(request.user.is_superuser) and super().has_delete_permission(request, obj)

    def has_revoke_permission(self, request):
        return request.user.has_perm("accounts.change_apikey")

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_keys(self, request, queryset):
        from accounts.services.keys import api_key_revoke

        done, failures = 0, []
        for key in queryset.select_related("org", "user"):
            try:
                api_key_revoke(key=key, actor=request.user)
                done += 1
            except ApplicationError as exc:
                failures.append(f"{key.name} ({key.public_id}): {exc.message}")
        _report(self, request, done, "Revoked", failures)


@admin.register(ApiKeyUsage)
class ApiKeyUsageAdmin(HistoryAdmin):
    list_display = ["at", "key", "method", "path", "status", "duration_ms", "ip", "request_id"]
    list_filter = ["method", "status"]
    search_fields = ["key__public_id", "key__name", "path", "request_id"]
    list_select_related = ["key"]
    date_hierarchy = "at"


# --- The audit trail and security events ----------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(HistoryAdmin):
    list_display = ["created_at", "action", "entity_type", "entity_id", "org_name", "actor_email", "ip"]
    list_filter = ["entity_type"]
    search_fields = ["action", "entity_id", "actor_email", "org_name", "request_id"]
    date_hierarchy = "created_at"


@admin.register(SecurityEvent)
class SecurityEventAdmin(HistoryAdmin):
    list_display = ["created_at", "kind", "identifier", "org", "user", "ip", "path"]
    list_filter = ["kind"]
    search_fields = ["identifier", "path", "request_id", "user__email", "org__name"]
    list_select_related = ["org", "user"]
    date_hierarchy = "created_at"
