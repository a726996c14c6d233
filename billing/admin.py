"""Django admin of `billing` for platform ops staff.

The ledger and the usage history are read-only (they are facts; corrections are new ledger
entries). Credits are granted through the ``grant_credits`` action on credit accounts, which goes
through ``credits_grant`` and so writes the audit row like any other grant.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.template.response import TemplateResponse

from billing.models import (
    CreditAccount,
    CreditTransaction,
    PaymentEvent,
    PriceOverride,
    Subscription,
    UsageCapEvent,
    UsageCapPolicy,
    UsageRecord,
)
from billing.services.credits import credits_grant
from core.errors import ApplicationError


class ReadOnlyAdmin(admin.ModelAdmin):
    """History: viewable, never edited; only superusers may delete (retention clean-up)."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return request.user.is_superuser


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "org",
        "model",
        "provider_type",
        "channel",
        "prompt_tokens",
        "completion_tokens",
        "cost_micros",
        "status",
    )
    list_filter = ("status", "channel", "provider_type", "usage_estimated")
    search_fields = ("model", "request_id", "org__name")
    date_hierarchy = "created_at"
    list_select_related = ("org",)
    show_full_result_count = False


@admin.register(CreditTransaction)
class CreditTransactionAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "org",
        "kind",
        "amount_micros",
        "balance_after_micros",
        "action",
        "reference_id",
        "actor",
    )
    list_filter = ("kind",)
    search_fields = ("org__name", "reference_id", "action")
    list_select_related = ("org", "actor")


@admin.register(UsageCapEvent)
class UsageCapEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "org", "decision", "reason", "policy", "model", "tokens", "cost_micros")
    list_filter = ("decision", "reason")
    list_select_related = ("org", "policy")


@admin.register(PaymentEvent)
class PaymentEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "provider", "event_id", "event_type", "org", "outcome")
    search_fields = ("event_id", "event_type")


@admin.register(UsageCapPolicy)
class UsageCapPolicyAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "org",
        "window",
        "scope",
        "scope_value",
        "max_tokens",
        "max_cost_micros",
        "enabled",
        "managed",
    )
    list_filter = ("window", "scope", "enabled", "managed")
    search_fields = ("name", "org__name")
    readonly_fields = ("managed", "managed_key")


@admin.register(PriceOverride)
class PriceOverrideAdmin(admin.ModelAdmin):
    list_display = ("model", "provider_type", "org", "input_per_million", "output_per_million")
    search_fields = ("model", "org__name")


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    list_display = ("org", "plan", "status", "current_period_end")
    list_filter = ("plan", "status")
    readonly_fields = (
        "plan",
        "status",
        "provider_customer_id",
        "provider_subscription_id",
        "current_period_end",
    )


class GrantCreditsForm(forms.Form):
    amount = forms.DecimalField(min_value=0.000001, max_digits=16, decimal_places=6)
    note = forms.CharField(max_length=500, required=False)


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin):
    list_display = ("org", "balance_micros", "held_micros", "auto_topup_enabled", "updated_at")
    search_fields = ("org__name",)
    readonly_fields = ("org", "balance_micros", "held_micros")
    actions = ["grant_credits"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Grant credits (audited)")
    def grant_credits(self, request, queryset):
        form = GrantCreditsForm(request.POST if "apply" in request.POST else None)
        if "apply" in request.POST and form.is_valid():
            granted = 0
            for account in queryset.select_related("org"):
                try:
                    credits_grant(
                        org=account.org,
                        actor=request.user,
                        amount=form.cleaned_data["amount"],
                        note=form.cleaned_data["note"] or "granted by staff",
                    )
                    granted += 1
                except ApplicationError as exc:
                    self.message_user(request, f"{account.org}: {exc.message}", messages.ERROR)
            self.message_user(request, f"Granted {form.cleaned_data['amount']} credits to {granted} org(s).")
            return None
        return TemplateResponse(
            request,
            "admin/billing/grant_credits.html",
            {**self.admin_site.each_context(request), "form": form, "accounts": queryset},
        )
