"""Django admin for every `agents` model, for platform ops staff.

Principles (the same as the accounts admin):
- secrets never show: provider and personal API keys appear masked (``sk-…abcd``); forms take a new
  key write-only (blank keeps the stored one) and never render the stored value or its ciphertext;
  extra headers (which often carry credentials) are write-only too;
- provider writes go through ``agents.services.providers`` (outbound guard on base URLs, header
  rules, verification reset, audit rows with the key masked); every other admin write leaves an
  audit row in the org's activity log, secrets replaced by a marker;
- history (agent runs) is read-only; only superusers may delete it;
- lifecycle actions go through the agent services, so the status stream hears about them.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import models

from accounts.admin import AuditedAdminMixin, HistoryAdmin
from accounts.services.audit import audit_record
from agents.models import (
    Agent,
    AgentMemoryEntry,
    AgentRun,
    AgentShare,
    BuiltinToolConfig,
    OrgAIConfig,
    PersonalAIConfig,
    Provider,
)
from agents.selectors.agents import agent_online
from agents.services import providers as provider_services
from agents.services.agents import agent_stop, agent_update
from core.crypto import mask
from core.errors import ApplicationError

# Encrypted fields: never rendered, never written to an audit row.
SECRET_FIELDS = frozenset({"api_key", "extra_headers"})
SECRET_MARKER = "(secret changed)"  # noqa: S105 - a label, not a secret


def _org_of(obj: models.Model):
    if isinstance(obj, AgentShare):
        return obj.agent.org
    if isinstance(obj, PersonalAIConfig):
        return None  # a person's own setting, not an org's
    return getattr(obj, "org", None)


def _snapshot(obj: models.Model, names: list[str] | None = None) -> dict[str, Any]:
    """Plain values of ``names`` (default: every concrete field); secrets become a marker."""
    fields = [f for f in obj._meta.concrete_fields if names is None or f.name in names or f.attname in names]
    values: dict[str, Any] = {}
    for field in fields:
        if field.name in SECRET_FIELDS:
            if names is not None:
                values[field.name] = SECRET_MARKER
            continue
        values[field.name] = field.value_from_object(obj)
    return values


class AuditedAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Saves and deletes write an audit row, with the agents app's org rules and secret markers."""

    def audit_org(self, obj: models.Model):
        return _org_of(obj)

    def audit_snapshot(self, obj: models.Model, names: list[str] | None = None) -> dict[str, Any]:
        return _snapshot(obj, names)

    def audited_changes(self, form) -> list[str]:
        names = [name for name in form.changed_data if not name.startswith("new_")]
        return names + [field for field in SECRET_FIELDS if getattr(form, "secret_changed", {}).get(field)]


def _form_error(exc: ApplicationError) -> forms.ValidationError:
    """A service's 4xx as a form error, so the admin shows it instead of failing."""
    fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
    if isinstance(fields, dict) and fields:
        return forms.ValidationError("; ".join(str(m) for messages_ in fields.values() for m in messages_))
    return forms.ValidationError(exc.message)


class SecretKeyForm(forms.ModelForm):
    """A write-only ``new_api_key`` replaces ``api_key``; blank keeps it, ``clear`` empties it."""

    new_api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Leave blank to keep the stored key. It is stored encrypted and never shown again.",
    )
    clear_api_key = forms.BooleanField(required=False, help_text="Remove the stored key.")
    api_base = forms.CharField(
        required=False, max_length=500, help_text="Empty: the type's default base URL."
    )

    def clean_api_base(self) -> str:
        """The outbound guard's rules for base URLs (private addresses need the operator's allowlist)."""
        try:
            return provider_services.clean_api_base(self.cleaned_data.get("api_base"))
        except ApplicationError as exc:
            raise _form_error(exc) from exc

    def new_secret(self) -> str | None:
        """The key to store: a new one, '' to clear it, or None to keep the stored one."""
        if self.cleaned_data.get("new_api_key"):
            return self.cleaned_data["new_api_key"]
        if self.cleaned_data.get("clear_api_key"):
            return ""
        return None


class ProviderAdminForm(SecretKeyForm):
    """Provider: the key and the extra headers are both write-only; rules are the API's."""

    new_extra_headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "autocomplete": "off"}),
        help_text=(
            'A JSON object, e.g. {"X-Team": "a"}. Leave blank to keep the stored headers; {} removes them.'
        ),
    )

    class Meta:
        model = Provider
        fields = ["org", "name", "provider_type", "api_base", "enabled", "priority"]

    def clean_new_extra_headers(self) -> dict | None:
        raw = (self.cleaned_data.get("new_extra_headers") or "").strip()
        if not raw:
            return None
        try:
            headers = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError("Not valid JSON.") from exc
        try:
            provider_services.clean_extra_headers(headers)
        except ApplicationError as exc:
            raise _form_error(exc) from exc
        return headers

    def clean(self):
        cleaned = super().clean()
        org, name = cleaned.get("org") or getattr(self.instance, "org", None), cleaned.get("name")
        if org is not None and name:
            taken = Provider.objects.filter(org=org, name__iexact=name.strip()).exclude(pk=self.instance.pk)
            if taken.exists():
                self.add_error("name", "The organisation has a provider of this name already.")
        return cleaned


@admin.display(description="API key")
def masked_key(obj) -> str:
    return mask(obj.api_key) if obj.api_key else "—"


PROVIDER_FORM_FIELDS = ("name", "provider_type", "api_base", "enabled", "priority")


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Writes go through ``agents.services.providers`` (outbound guard, header rules, verification
    reset on a new endpoint, audit rows with the key masked)."""

    form = ProviderAdminForm
    list_display = [
        "name",
        "org",
        "provider_type",
        masked_key,
        "enabled",
        "priority",
        "is_verified",
        "consecutive_failures",
        "unhealthy_until",
        "updated_at",
    ]
    list_filter = ["provider_type", "enabled", "is_verified"]
    search_fields = ["name", "api_base", "org__name", "org__slug"]
    list_select_related = ["org"]
    autocomplete_fields = ["org"]
    readonly_fields = [
        masked_key,
        "has_extra_headers",
        "is_verified",
        "verified_at",
        "last_error",
        "consecutive_failures",
        "unhealthy_until",
        "created_by",
        "created_at",
        "updated_at",
    ]

    @admin.display(description="extra headers", boolean=True)
    def has_extra_headers(self, obj: Provider) -> bool:
        return bool(obj.extra_headers)

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        return ["org", *fields] if obj is not None else fields  # a provider never changes org

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        secrets: dict[str, Any] = {}
        if (api_key := form.new_secret()) is not None:
            secrets["api_key"] = api_key
        if data.get("new_extra_headers") is not None:
            secrets["extra_headers"] = data["new_extra_headers"]
        if change:
            fields = {name: data[name] for name in PROVIDER_FORM_FIELDS if name in form.changed_data}
            provider_services.provider_update(provider=obj, actor=request.user, **fields, **secrets)
            obj.refresh_from_db()
            return
        provider = provider_services.provider_create(
            org=data["org"],
            actor=request.user,
            **{name: data[name] for name in PROVIDER_FORM_FIELDS},
            **secrets,
        )
        obj.pk = provider.pk  # the admin's log entry and redirect point at the row made

    def delete_model(self, request, obj):
        provider_services.provider_delete(provider=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for provider in queryset.select_related("org"):
            provider_services.provider_delete(provider=provider, actor=request.user)


class OrgAIConfigAdminForm(forms.ModelForm):
    class Meta:
        model = OrgAIConfig
        fields = ["org", "primary_provider", "primary_model", "allow_personal_keys"]

    def clean(self):
        cleaned = super().clean()
        org, provider = cleaned.get("org"), cleaned.get("primary_provider")
        if org is not None and provider is not None and provider.org_id != org.pk:
            self.add_error("primary_provider", "Pick a provider of this organisation.")
        return cleaned


@admin.register(OrgAIConfig)
class OrgAIConfigAdmin(AuditedAdmin):
    form = OrgAIConfigAdminForm
    list_display = ["org", "primary_provider", "primary_model", "allow_personal_keys", "updated_at"]
    list_filter = ["allow_personal_keys"]
    search_fields = ["org__name", "org__slug", "primary_model"]
    list_select_related = ["org", "primary_provider"]
    autocomplete_fields = ["org", "primary_provider"]
    readonly_fields = ["updated_at"]


class PersonalAIConfigAdminForm(SecretKeyForm):
    class Meta:
        model = PersonalAIConfig
        fields = ["user", "provider_type", "api_base", "model"]

    def save(self, commit=True):
        api_key = self.new_secret()
        self.secret_changed = {"api_key": api_key is not None}
        if api_key is not None:
            self.instance.api_key = api_key
        return super().save(commit)


@admin.register(PersonalAIConfig)
class PersonalAIConfigAdmin(AuditedAdmin):
    """A member's own key: staff may change its endpoint or clear a leaked key, never read it."""

    form = PersonalAIConfigAdminForm
    list_display = ["user", "provider_type", "api_base", masked_key, "model", "updated_at"]
    list_filter = ["provider_type"]
    search_fields = ["user__email", "user__display_name", "model"]
    list_select_related = ["user"]
    autocomplete_fields = ["user"]
    readonly_fields = [masked_key, "updated_at"]


# --- agents --------------------------------------------------------------------------------------


class AgentShareInline(admin.TabularInline):
    """Who a private agent is shared with; shares are made through the API (membership rules)."""

    model = AgentShare
    extra = 0
    fields = ["user", "created_at"]
    readonly_fields = fields
    can_delete = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Agent)
class AgentAdmin(AuditedAdmin):
    list_display = [
        "name",
        "key",
        "org",
        "owner",
        "model",
        "visibility",
        "status",
        "is_online",
        "last_heartbeat_at",
        "published_at",
        "updated_at",
    ]
    list_filter = ["visibility", "status", ("published_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "key", "description", "org__name", "org__slug", "owner__email"]
    list_select_related = ["org", "owner"]
    autocomplete_fields = ["org", "owner", "provider", "forked_from"]
    readonly_fields = ["status", "last_heartbeat_at", "published_at", "created_at", "updated_at"]
    date_hierarchy = "created_at"
    inlines = [AgentShareInline]
    actions = ["stop_agents", "unpublish_agents"]

    @admin.display(description="online", boolean=True)
    def is_online(self, agent: Agent) -> bool:
        return agent_online(agent)

    def save_formset(self, request, form, formset, change):
        """Shares removed in the inline are audited like the API's."""
        formset.save(commit=False)
        for share in formset.deleted_objects:
            audit_record(
                org=form.instance.org,
                actor=request.user,
                action="agent.unshared",
                entity=form.instance,
                before={"user": str(share.user_id)},
            )
            share.delete()
        formset.save_m2m()

    @admin.action(description="Stop the selected agents")
    def stop_agents(self, request, queryset):
        for agent in queryset.select_related("org"):
            agent_stop(agent=agent, actor=request.user)
        self.message_user(request, f"Stopped {queryset.count()} agent(s).", messages.SUCCESS)

    @admin.action(description="Take the selected agents off the marketplace")
    def unpublish_agents(self, request, queryset):
        done = 0
        for agent in queryset.filter(visibility=Agent.Visibility.PUBLIC).select_related("org"):
            try:
                agent_update(agent=agent, actor=None, visibility=Agent.Visibility.ORG)
            except ApplicationError as exc:
                self.message_user(request, f"{agent}: {exc.message}", messages.ERROR)
                continue
            done += 1
        self.message_user(request, f"Unpublished {done} agent(s).", messages.SUCCESS)


@admin.register(AgentShare)
class AgentShareAdmin(AuditedAdmin):
    """Browse shares; they are made through the API, which checks membership."""

    list_display = ["agent", "user", "created_at"]
    search_fields = ["agent__name", "agent__key", "user__email"]
    list_select_related = ["agent", "user"]
    readonly_fields = ["agent", "user", "created_at"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(AgentRun)
class AgentRunAdmin(HistoryAdmin):
    list_display = [
        "id",
        "agent",
        "org",
        "trigger",
        "status",
        "finish_reason",
        "model",
        "provider_source",
        "tool_calls",
        "prompt_tokens",
        "completion_tokens",
        "duration_ms",
        "created_at",
    ]
    list_filter = ["status", "trigger", "provider_source", "finish_reason"]
    search_fields = ["=id", "agent__name", "agent__key", "org__name", "model"]
    list_select_related = ["agent", "org"]
    date_hierarchy = "created_at"


@admin.register(BuiltinToolConfig)
class BuiltinToolConfigAdmin(AuditedAdmin):
    list_display = ["name", "org", "enabled", "updated_at"]
    list_filter = ["enabled", "name"]
    search_fields = ["name", "org__name", "org__slug"]
    list_select_related = ["org"]
    autocomplete_fields = ["org"]
    readonly_fields = ["updated_at"]


@admin.register(AgentMemoryEntry)
class AgentMemoryEntryAdmin(AuditedAdmin):
    list_display = ["excerpt", "agent", "user", "org", "created_at"]
    search_fields = ["content", "agent__name", "agent__key", "user__email"]
    list_select_related = ["agent", "user", "org"]
    list_filter = [("org", admin.RelatedOnlyFieldListFilter)]
    autocomplete_fields = ["agent", "user", "org"]
    readonly_fields = ["created_at"]
    date_hierarchy = "created_at"

    @admin.display(description="content")
    def excerpt(self, entry: AgentMemoryEntry) -> str:
        return entry.content[:80]
