"""Serializers of the billing API (input and output shapes kept apart)."""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from billing.models import (
    CapScope,
    CapWindow,
    CreditTransaction,
    PriceOverride,
    UsageCapEvent,
    UsageCapPolicy,
)

MICROS = 1_000_000
GROUP_BY = ("provider", "model", "agent", "user", "channel", "key")


# --- usage -------------------------------------------------------------------------------------


class UsageQuerySerializer(serializers.Serializer):
    """Query parameters shared by the usage reports."""

    # ``from`` is a Python keyword: declared through the class namespace.
    locals()["from"] = serializers.DateTimeField(
        required=False, help_text="Inclusive (ISO 8601); default 30 days ago."
    )
    to = serializers.DateTimeField(required=False, help_text="Exclusive (ISO 8601); default now.")
    agent = serializers.UUIDField(required=False)
    provider = serializers.CharField(required=False, help_text="A provider id or a provider type.")
    model = serializers.CharField(required=False)
    user = serializers.UUIDField(required=False)
    channel = serializers.CharField(required=False)
    key = serializers.UUIDField(required=False)


class UsageTimeseriesQuerySerializer(UsageQuerySerializer):
    bucket = serializers.ChoiceField(choices=["hour", "day"], default="day")


class UsageBreakdownQuerySerializer(UsageQuerySerializer):
    group_by = serializers.ChoiceField(choices=GROUP_BY, default="model")


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cost_usd = serializers.FloatField()


class UsageSummaryOutputSerializer(UsageTotalsSerializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class UsagePointSerializer(UsageTotalsSerializer):
    bucket = serializers.DateTimeField()


class UsageTimeseriesOutputSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    bucket = serializers.CharField()
    items = UsagePointSerializer(many=True)


class UsageGroupSerializer(UsageTotalsSerializer):
    key = serializers.CharField(allow_null=True)
    provider_type = serializers.CharField(required=False)


class UsageBreakdownOutputSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    group_by = serializers.CharField()
    items = UsageGroupSerializer(many=True)


# --- pricing -----------------------------------------------------------------------------------


class CatalogueEntrySerializer(serializers.Serializer):
    model = serializers.CharField()
    vendor = serializers.CharField()
    input_per_million = serializers.FloatField()
    output_per_million = serializers.FloatField()


class CatalogueOutputSerializer(serializers.Serializer):
    version = serializers.CharField()
    items = CatalogueEntrySerializer(many=True)


class PriceOverrideOutputSerializer(serializers.ModelSerializer):
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=False)
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=4, coerce_to_string=False)

    class Meta:
        model = PriceOverride
        fields = [
            "id",
            "model",
            "provider_type",
            "input_per_million",
            "output_per_million",
            "created_at",
            "updated_at",
        ]


class PriceOverrideInputSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    provider_type = serializers.CharField(max_length=32, required=False, allow_blank=True, default="")
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=4, min_value=Decimal(0))
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=4, min_value=Decimal(0))


# --- caps --------------------------------------------------------------------------------------


class UsageCapPolicyOutputSerializer(serializers.ModelSerializer):
    max_cost_usd = serializers.SerializerMethodField()

    class Meta:
        model = UsageCapPolicy
        fields = [
            "id",
            "name",
            "window",
            "max_tokens",
            "max_cost_usd",
            "scope",
            "scope_value",
            "priority",
            "enabled",
            "managed",
            "created_at",
            "updated_at",
        ]

    def get_max_cost_usd(self, policy) -> float | None:
        return None if policy.max_cost_micros is None else policy.max_cost_micros / MICROS


class UsageCapPolicyInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=120, required=False, allow_blank=True)
    window = serializers.ChoiceField(choices=CapWindow.choices)
    max_tokens = serializers.IntegerField(min_value=0, required=False, allow_null=True)
    max_cost_usd = serializers.DecimalField(
        max_digits=14, decimal_places=6, min_value=Decimal(0), required=False, allow_null=True
    )
    scope = serializers.ChoiceField(choices=CapScope.choices, required=False, default=CapScope.ORG)
    scope_value = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    priority = serializers.IntegerField(required=False, default=100, min_value=-1000000, max_value=1000000)
    enabled = serializers.BooleanField(required=False, default=True)

    def to_fields(self) -> dict:
        data = dict(self.validated_data)
        if "max_cost_usd" in data:
            value = data.pop("max_cost_usd")
            data["max_cost_micros"] = None if value is None else int(value * MICROS)
        return data


class UsageCapPolicyUpdateSerializer(UsageCapPolicyInputSerializer):
    window = serializers.ChoiceField(choices=CapWindow.choices, required=False)
    scope = serializers.ChoiceField(choices=CapScope.choices, required=False)
    scope_value = serializers.CharField(max_length=200, required=False, allow_blank=True)
    priority = serializers.IntegerField(required=False, min_value=-1000000, max_value=1000000)
    enabled = serializers.BooleanField(required=False)


class UsageCapUtilizationSerializer(serializers.Serializer):
    policy = UsageCapPolicyOutputSerializer()
    window_start = serializers.DateTimeField()
    resets_at = serializers.DateTimeField()
    used_tokens = serializers.IntegerField()
    reserved_tokens = serializers.IntegerField()
    used_cost_usd = serializers.FloatField()
    reserved_cost_usd = serializers.FloatField()
    max_tokens = serializers.IntegerField(allow_null=True)
    max_cost_usd = serializers.FloatField(allow_null=True)
    utilization = serializers.FloatField(help_text="Highest of tokens and cost, used + reserved over max.")


class UsageCapUtilizationOutputSerializer(serializers.Serializer):
    items = UsageCapUtilizationSerializer(many=True)


class UsageCapEventOutputSerializer(serializers.ModelSerializer):
    cost_usd = serializers.SerializerMethodField()
    policy_name = serializers.SerializerMethodField()

    class Meta:
        model = UsageCapEvent
        fields = [
            "id",
            "decision",
            "reason",
            "policy",
            "policy_name",
            "model",
            "agent_id",
            "user_id",
            "api_key_id",
            "tokens",
            "cost_usd",
            "created_at",
        ]

    def get_cost_usd(self, event) -> float:
        return event.cost_micros / MICROS

    def get_policy_name(self, event) -> str:
        return event.policy.name if event.policy_id and event.policy else ""


# --- credits -----------------------------------------------------------------------------------


def credits(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS).quantize(Decimal("0.000001"))


class CreditTransactionOutputSerializer(serializers.ModelSerializer):
    kind = serializers.CharField(
        help_text="purchase, bonus, signup_bonus, admin_grant, consume or refund."
    )  # plain string: several apps have a `kind` enum
    amount = serializers.SerializerMethodField()
    balance_after = serializers.SerializerMethodField()

    class Meta:
        model = CreditTransaction
        fields = [
            "id",
            "kind",
            "amount",
            "balance_after",
            "action",
            "reference_id",
            "note",
            "actor",
            "created_at",
        ]

    def get_amount(self, tx) -> float:
        return float(credits(tx.amount_micros))

    def get_balance_after(self, tx) -> float:
        return float(credits(tx.balance_after_micros))


class CreditBalanceOutputSerializer(serializers.Serializer):
    balance = serializers.FloatField()
    held = serializers.FloatField(help_text="Held by LLM calls in flight.")
    available = serializers.FloatField()
    credits_per_usd = serializers.IntegerField()
    auto_topup = serializers.DictField()


class CreditConsumeInputSerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=16, decimal_places=6, min_value=Decimal("0.000001"))
    action = serializers.CharField(max_length=100)
    reference_id = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class CreditConsumeOutputSerializer(serializers.Serializer):
    balance = serializers.FloatField()
    transaction = CreditTransactionOutputSerializer()
    duplicate = serializers.BooleanField(help_text="True when reference_id was already charged.")


class CreditGrantInputSerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=16, decimal_places=6, min_value=Decimal("0.000001"))
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class CreditRefundInputSerializer(serializers.Serializer):
    transaction_id = serializers.UUIDField()
    amount = serializers.DecimalField(
        max_digits=16, decimal_places=6, min_value=Decimal("0.000001"), required=False
    )
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class AutoTopupInputSerializer(serializers.Serializer):
    enabled = serializers.BooleanField()
    threshold = serializers.DecimalField(
        max_digits=16, decimal_places=6, required=False, min_value=Decimal(0)
    )
    amount = serializers.DecimalField(max_digits=16, decimal_places=6, required=False, min_value=Decimal(0))


# --- plans -------------------------------------------------------------------------------------


class PlanOutputSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    rank = serializers.IntegerField()
    price_usd_month = serializers.FloatField(allow_null=True)
    features = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField()
    credit_billing = serializers.BooleanField()


class PlanListOutputSerializer(serializers.Serializer):
    items = PlanOutputSerializer(many=True)
    default = serializers.CharField()


class SubscriptionOutputSerializer(serializers.Serializer):
    plan = PlanOutputSerializer()
    status = serializers.CharField()
    is_default = serializers.BooleanField()
    current_period_end = serializers.DateTimeField(allow_null=True)
    payments_configured = serializers.BooleanField()


class ChangePlanInputSerializer(serializers.Serializer):
    plan = serializers.CharField(max_length=40)


class DowngradeProblemSerializer(serializers.Serializer):
    resource = serializers.CharField()
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    remove = serializers.IntegerField()


class ValidateDowngradeOutputSerializer(serializers.Serializer):
    plan = serializers.CharField()
    ok = serializers.BooleanField()
    problems = DowngradeProblemSerializer(many=True)


class LicenseStatusOutputSerializer(serializers.Serializer):
    tier = serializers.CharField()
    plan = PlanOutputSerializer()
    features = serializers.ListField(child=serializers.CharField())
    limits = serializers.DictField()
    usage = serializers.DictField()


class CheckoutInputSerializer(serializers.Serializer):
    kind = serializers.CharField(max_length=20, help_text="credits or subscription.")
    credits = serializers.IntegerField(required=False, min_value=1)
    plan = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    success_url = serializers.URLField(required=False)
    cancel_url = serializers.URLField(required=False)


class CheckoutOutputSerializer(serializers.Serializer):
    id = serializers.CharField()
    url = serializers.URLField()


class WebhookOutputSerializer(serializers.Serializer):
    received = serializers.BooleanField()
    duplicate = serializers.BooleanField()
    outcome = serializers.CharField()
