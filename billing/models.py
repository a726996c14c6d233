"""Billing tables: usage records and their rollups, tenant price overrides, spend-cap policies with
their window counters, reservations and events, the credit ledger, subscriptions and payment events.

Money is stored as integers: costs in micro-dollars (1e-6 USD) and credits in micro-credits (1e-6
credit), so that sums and conditional updates are exact on every database.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class UsageRecord(models.Model):
    """One LLM call (chat, completion, embedding, title, extraction, …) as metered at the choke point."""

    class Status(models.TextChoices):
        OK = "ok", "OK"
        ERROR = "error", "Error"
        CANCELLED = "cancelled", "Cancelled"

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="usage_records")
    created_at = models.DateTimeField(db_index=False)
    # Plain ids (no foreign keys): a record outlives the agent, key or provider it names, and
    # inserting one must not lock or look up other tables.
    user_id = models.UUIDField(null=True, blank=True)
    agent_id = models.UUIDField(null=True, blank=True)
    api_key_id = models.UUIDField(null=True, blank=True)
    provider_id = models.UUIDField(null=True, blank=True)
    provider_type = models.CharField(max_length=32, blank=True)
    provider_source = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=200, blank=True)
    purpose = models.CharField(max_length=32, blank=True)
    channel = models.CharField(max_length=16, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    price_known = models.BooleanField(default=True)
    usage_estimated = models.BooleanField(default=False)
    latency_ms = models.FloatField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.OK)
    error_code = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "created_at"], name="usage_org_created")]

    def __str__(self) -> str:
        return f"{self.model} {self.prompt_tokens}+{self.completion_tokens} ({self.status})"


class UsageRollup(models.Model):
    """Sums of usage records per hour or day, per org, for one dimension value at a time.

    ``dimension`` is ``""`` for the org's total, else one of provider, model, agent, user, channel
    or key with ``value`` the id or name (``""`` for calls without one; for providers ``label``
    holds the provider type). One row per dimension value rather than per combination keeps a
    month of millions of records at a few thousand rows; reports that filter on two dimensions at
    once read the raw records instead.
    """

    class Granularity(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="usage_rollups")
    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket = models.DateTimeField()
    dimension = models.CharField(max_length=10, blank=True)
    value = models.CharField(max_length=200, blank=True)
    label = models.CharField(max_length=32, blank=True)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(
                fields=["org", "granularity", "dimension", "bucket"], name="rollup_org_gran_dim_bucket"
            )
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket:%Y-%m-%d %H:00} {self.dimension or 'total'}={self.value}"


class UsageRollupState(models.Model):
    """How far the rollups reach: hour rollups cover everything before ``hours_through``, day
    rollups everything before ``days_through`` (one row, id 1)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    hours_through = models.DateTimeField(null=True, blank=True)
    days_through = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"rolled up to {self.hours_through}"


class PriceOverride(models.Model):
    """An org's own price for a model (negotiated rates, self-hosted models), over the catalogue."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="price_overrides")
    model = models.CharField(max_length=200)
    provider_type = models.CharField(max_length=32, blank=True, help_text="Empty: any provider.")
    input_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, validators=[MinValueValidator(0)]
    )
    output_per_million = models.DecimalField(
        max_digits=12, decimal_places=4, validators=[MinValueValidator(0)]
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model", "provider_type"]
        constraints = [
            models.UniqueConstraint(fields=["org", "model", "provider_type"], name="price_override_unique")
        ]

    def __str__(self) -> str:
        return f"{self.model} ({self.provider_type or 'any'})"


class CapWindow(models.TextChoices):
    HOUR = "hour", "Hour"
    DAY = "day", "Day"
    WEEK = "week", "Week"
    MONTH = "month", "Month"


class CapScope(models.TextChoices):
    ORG = "org", "Whole organisation"
    AGENT = "agent", "Agent"
    PROVIDER = "provider", "Provider"
    MODEL = "model", "Model"
    USER = "user", "User"
    API_KEY = "api_key", "API key"


class UsageCapPolicy(models.Model):
    """A spend cap: at most ``max_tokens`` and/or ``max_cost_micros`` per UTC-aligned window, for the
    whole org or one agent, provider, model, user or API key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="usage_cap_policies"
    )
    name = models.CharField(max_length=120, blank=True)
    window = models.CharField(max_length=8, choices=CapWindow.choices)
    max_tokens = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    max_cost_micros = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    scope = models.CharField(max_length=10, choices=CapScope.choices, default=CapScope.ORG)
    scope_value = models.CharField(max_length=200, blank=True, help_text="Id or model name; empty for org.")
    priority = models.IntegerField(default=100, help_text="Higher is checked (and reported) first.")
    enabled = models.BooleanField(default=True)
    managed = models.BooleanField(default=False, help_text="Set by the plan; not editable through the API.")
    managed_key = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-priority", "created_at"]
        indexes = [models.Index(fields=["org", "enabled"], name="cap_policy_org_enabled")]
        constraints = [
            models.CheckConstraint(
                condition=Q(max_tokens__isnull=False) | Q(max_cost_micros__isnull=False),
                name="cap_policy_has_a_limit",
            ),
            models.UniqueConstraint(
                fields=["org", "managed_key"], condition=~Q(managed_key=""), name="cap_policy_managed_key"
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"{self.scope} {self.window} cap"


class UsageCapCounter(models.Model):
    """What one policy has spent (``used_*``) and holds for calls in flight (``reserved_*``) in one
    window. Reservation and settlement change these rows under a row lock, in one transaction."""

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    policy = models.ForeignKey(UsageCapPolicy, on_delete=models.CASCADE, related_name="counters")
    window_start = models.DateTimeField()
    used_tokens = models.BigIntegerField(default=0)
    used_cost_micros = models.BigIntegerField(default=0)
    reserved_tokens = models.BigIntegerField(default=0)
    reserved_cost_micros = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["policy", "window_start"], name="cap_counter_policy_window")
        ]

    def __str__(self) -> str:
        return f"{self.policy_id} from {self.window_start:%Y-%m-%d %H:%M}"


class UsageReservation(models.Model):
    """The worst case held for one LLM call until it settles (or expires, if its worker died)."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.HELD)
    counter_ids = models.JSONField(default=list)
    tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    credit_micros = models.BigIntegerField(default=0, help_text="Micro-credits held on the credit account.")
    model = models.CharField(max_length=200, blank=True)
    provider_type = models.CharField(max_length=32, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    settled_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["status", "expires_at"], name="reservation_status_expiry")]

    def __str__(self) -> str:
        return f"{self.tokens} tokens ({self.status})"


class UsageCapEvent(models.Model):
    """An allow or block decision of the cap guard (a block names the policy that refused)."""

    class Decision(models.TextChoices):
        ALLOW = "allow", "Allowed"
        BLOCK = "block", "Blocked"

    id = models.BigAutoField(primary_key=True)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="+")
    policy = models.ForeignKey(
        UsageCapPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    decision = models.CharField(max_length=5, choices=Decision.choices)
    reason = models.CharField(max_length=64, blank=True)
    model = models.CharField(max_length=200, blank=True)
    agent_id = models.UUIDField(null=True, blank=True)
    user_id = models.UUIDField(null=True, blank=True)
    api_key_id = models.UUIDField(null=True, blank=True)
    tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["org", "created_at"], name="cap_event_org_created")]

    def __str__(self) -> str:
        return f"{self.decision} {self.model}"


class CreditAccount(models.Model):
    """An org's credit balance (never negative) and what in-flight LLM calls hold of it."""

    id = models.BigAutoField(primary_key=True)
    org = models.OneToOneField(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="credit_account")
    balance_micros = models.BigIntegerField(default=0)
    held_micros = models.BigIntegerField(default=0)
    auto_topup_enabled = models.BooleanField(default=False)
    auto_topup_threshold_micros = models.BigIntegerField(default=0)
    auto_topup_amount_micros = models.BigIntegerField(default=0)
    auto_topup_attempted_at = models.DateTimeField(
        null=True, blank=True, help_text="The last automatic charge attempt (one per cool-down)."
    )
    provider_customer_id = models.CharField(
        max_length=100,
        blank=True,
        help_text="The payment provider's customer whose saved card auto top-up charges.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(balance_micros__gte=0), name="credit_balance_not_negative"),
            models.CheckConstraint(condition=Q(held_micros__gte=0), name="credit_held_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.org_id}: {self.balance_micros / 1_000_000} credits"


class CreditTransaction(models.Model):
    """One entry of the credit ledger; the balance is the sum of ``amount_micros``."""

    class Kind(models.TextChoices):
        PURCHASE = "purchase", "Purchase"
        BONUS = "bonus", "Bonus"
        SIGNUP_BONUS = "signup_bonus", "Signup bonus"
        ADMIN_GRANT = "admin_grant", "Admin grant"
        CONSUME = "consume", "Consume"
        REFUND = "refund", "Refund"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="credit_transactions"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount_micros = models.BigIntegerField(help_text="Positive adds credits, negative takes them.")
    balance_after_micros = models.BigIntegerField()
    action = models.CharField(max_length=100, blank=True)
    reference_id = models.CharField(max_length=200, blank=True)
    note = models.CharField(max_length=500, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["org", "created_at"], name="credit_tx_org_created")]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "reference_id"], condition=~Q(reference_id=""), name="credit_tx_reference"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount_micros / 1_000_000}"


class Subscription(models.Model):
    """The plan an org is on (orgs without a row are on the default plan)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.OneToOneField(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="subscription")
    plan = models.CharField(max_length=40)
    status = models.CharField(max_length=20, default="active")
    provider_customer_id = models.CharField(max_length=100, blank=True)
    provider_subscription_id = models.CharField(max_length=100, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.org_id}: {self.plan}"


class PaymentEvent(models.Model):
    """A payment provider's webhook event, stored once: its unique id makes delivery idempotent."""

    id = models.BigAutoField(primary_key=True)
    provider = models.CharField(max_length=20, default="stripe")
    event_id = models.CharField(max_length=100)
    event_type = models.CharField(max_length=100)
    org = models.ForeignKey(
        settings.TENANT_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    outcome = models.CharField(max_length=200, blank=True)
    received_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "event_id"], name="payment_event_unique")]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_id}"
