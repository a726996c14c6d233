"""API of plans, the subscription, the licence status and payments.

- ``GET /billing/plans`` (public) · ``GET /billing/subscription`` · ``POST /billing/change-plan``
  (OWNER; 409 ``ERR_DOWNGRADE_BLOCKED`` listing what to remove) · ``POST /billing/validate-downgrade``.
- ``GET /license/status``: tier, features, limits and usage against them.
- ``POST /billing/checkout`` (OWNER): a hosted checkout session; 501 ``ERR_PAYMENTS_NOT_CONFIGURED``
  without a payment provider. ``POST /billing/webhook``: Stripe's signed events, applied once.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import TenantAPIView
from accounts.models import Role
from billing.catalogue import default_plan_key, plan_get, plans
from billing.models import Subscription
from billing.services.payments import checkout_create, payments_configured, webhook_process
from billing.services.plans import RESOURCE_LIMITS, downgrade_problems, org_plan, plan_change, resource_usage
from core.errors import ConflictError, ValidationError

from .serializers import (
    ChangePlanInputSerializer,
    CheckoutInputSerializer,
    CheckoutOutputSerializer,
    LicenseStatusOutputSerializer,
    PlanListOutputSerializer,
    SubscriptionOutputSerializer,
    ValidateDowngradeOutputSerializer,
    WebhookOutputSerializer,
)

_TAGS = ["billing"]


def _public_plan(plan: dict) -> dict:
    return {
        k: plan.get(k)
        for k in ("key", "name", "rank", "price_usd_month", "features", "limits", "credit_billing")
    }


class PlanListView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="billing_plans",
        tags=_TAGS,
        responses=PlanListOutputSerializer,
        summary="The plans on offer (public).",
    )
    def get(self, request):
        items = [_public_plan(p) for p in plans() if p.get("public", True)]
        return Response(PlanListOutputSerializer({"items": items, "default": default_plan_key()}).data)


def _subscription(org) -> dict:
    sub = Subscription.objects.filter(org=org).first()
    plan = org_plan(org)
    return {
        "plan": _public_plan(plan),
        "status": sub.status if sub else "active",
        "is_default": sub is None,
        "current_period_end": sub.current_period_end if sub else None,
        "payments_configured": payments_configured(),
    }


class BillingView(TenantAPIView):
    scope_area = "billing"
    read_role = Role.VIEWER
    write_role = Role.OWNER


class SubscriptionView(BillingView):
    @extend_schema(
        operation_id="billing_subscription",
        tags=_TAGS,
        responses=SubscriptionOutputSerializer,
        summary="The org's plan and subscription.",
    )
    def get(self, request):
        return Response(SubscriptionOutputSerializer(_subscription(request.org)).data)


class ChangePlanView(BillingView):
    @extend_schema(
        operation_id="billing_change_plan",
        tags=_TAGS,
        request=ChangePlanInputSerializer,
        responses={
            200: SubscriptionOutputSerializer,
            409: OpenApiResponse(OpenApiTypes.OBJECT, description="ERR_DOWNGRADE_BLOCKED"),
        },
        summary="Move the org to another plan (OWNER); a downgrade over the target's limits answers 409.",
    )
    def post(self, request):
        body = ChangePlanInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        plan_change(org=request.org, actor=request.user, plan=body.validated_data["plan"])
        return Response(SubscriptionOutputSerializer(_subscription(request.org)).data)


class ValidateDowngradeView(BillingView):
    write_role = Role.VIEWER

    @extend_schema(
        operation_id="billing_validate_downgrade",
        tags=_TAGS,
        request=ChangePlanInputSerializer,
        responses={
            200: ValidateDowngradeOutputSerializer,
            409: OpenApiResponse(
                OpenApiTypes.OBJECT, description="ERR_DOWNGRADE_BLOCKED with details.problems"
            ),
        },
        summary="Would the org fit the plan? 200 when it does, 409 listing what to remove.",
    )
    def post(self, request):
        body = ChangePlanInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = body.validated_data["plan"]
        target = plan_get(key)
        if target is None:
            raise ValidationError(f"Unknown plan {key!r}.", details={"plan": ["Unknown plan."]})
        problems = downgrade_problems(request.org, target)
        if problems:
            raise ConflictError(
                f"The organisation uses more than the {target['name']} plan allows; remove these first.",
                code="ERR_DOWNGRADE_BLOCKED",
                details={"plan": key, "problems": problems},
            )
        return Response(ValidateDowngradeOutputSerializer({"plan": key, "ok": True, "problems": []}).data)


class LicenseStatusView(TenantAPIView):
    scope_area = "license"
    read_role = Role.VIEWER

    @extend_schema(
        operation_id="license_status",
        tags=["platform"],
        responses=LicenseStatusOutputSerializer,
        summary="Tier, features, limits and usage against them.",
    )
    def get(self, request):
        plan = org_plan(request.org)
        limits = plan.get("limits") or {}
        usage = {
            limit_key: {"used": resource_usage(request.org, resource), "limit": limits.get(limit_key)}
            for resource, limit_key in RESOURCE_LIMITS.items()
        }
        return Response(
            LicenseStatusOutputSerializer(
                {
                    "tier": plan.get("key", ""),
                    "plan": _public_plan(plan),
                    "features": plan.get("features") or [],
                    "limits": limits,
                    "usage": usage,
                }
            ).data
        )


class CheckoutView(BillingView):
    @extend_schema(
        operation_id="billing_checkout",
        tags=_TAGS,
        request=CheckoutInputSerializer,
        responses={
            201: CheckoutOutputSerializer,
            501: OpenApiResponse(OpenApiTypes.OBJECT, description="ERR_PAYMENTS_NOT_CONFIGURED"),
        },
        summary="Open a hosted checkout for credits or a plan (OWNER).",
    )
    def post(self, request):
        body = CheckoutInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        base = request.build_absolute_uri("/")
        session = checkout_create(
            org=request.org,
            actor=request.user,
            kind=data["kind"],
            credits=data.get("credits"),
            plan=data.get("plan", ""),
            success_url=data.get("success_url") or f"{base}?checkout=success",
            cancel_url=data.get("cancel_url") or f"{base}?checkout=cancelled",
        )
        return Response(CheckoutOutputSerializer(session).data, status=201)


class PaymentWebhookView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        operation_id="billing_webhook",
        tags=_TAGS,
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter(
                "Stripe-Signature", OpenApiTypes.STR, location=OpenApiParameter.HEADER, required=True
            )
        ],
        responses={
            200: WebhookOutputSerializer,
            400: OpenApiResponse(OpenApiTypes.OBJECT, description="ERR_BAD_SIGNATURE"),
        },
        summary="Stripe webhook: signature checked on the raw body, each event applied once.",
    )
    def post(self, request):
        result = webhook_process(payload=request.body, signature=request.headers.get("Stripe-Signature"))
        return Response(WebhookOutputSerializer(result).data)


urlpatterns = [
    path("billing/plans", PlanListView.as_view(), name="billing-plans"),
    path("billing/subscription", SubscriptionView.as_view(), name="billing-subscription"),
    path("billing/change-plan", ChangePlanView.as_view(), name="billing-change-plan"),
    path("billing/validate-downgrade", ValidateDowngradeView.as_view(), name="billing-validate-downgrade"),
    path("billing/checkout", CheckoutView.as_view(), name="billing-checkout"),
    path("billing/webhook", PaymentWebhookView.as_view(), name="billing-webhook"),
    path("license/status", LicenseStatusView.as_view(), name="license-status"),
]
