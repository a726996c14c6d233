"""API of credits (API keys need the ``billing`` scope).

- ``GET /credits/balance`` · ``GET /credits/transactions`` (MEMBER)
- ``POST /credits/consume`` ``{amount, action, reference_id?}`` (MEMBER) → 200 ``{balance, transaction}``;
  402 ``ERR_INSUFFICIENT_CREDITS`` when short; a known ``reference_id`` is not charged again.
- ``POST /credits/grant`` ``{amount, note?}`` (OWNER or platform staff) → 201 transaction.
- ``POST /credits/refund`` (OWNER) · ``GET/PUT /credits/auto-topup`` (MEMBER reads, OWNER writes).
"""

from __future__ import annotations

from django.conf import settings
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import Role
from accounts.permissions import HasKeyScope, HasOrgRole
from billing.models import CreditTransaction
from billing.selectors.credits import credit_account_get, credit_transaction_list
from billing.services.credits import credits_auto_topup_update, credits_consume, credits_grant, credits_refund

from .serializers import (
    AutoTopupInputSerializer,
    CreditBalanceOutputSerializer,
    CreditConsumeInputSerializer,
    CreditConsumeOutputSerializer,
    CreditGrantInputSerializer,
    CreditRefundInputSerializer,
    CreditTransactionOutputSerializer,
    credits,
)

_TAGS = ["credits"]


def _balance(org) -> dict:
    account = credit_account_get(org=org)
    return {
        "balance": float(credits(account.balance_micros)),
        "held": float(credits(account.held_micros)),
        "available": float(credits(account.balance_micros - account.held_micros)),
        "credits_per_usd": int(getattr(settings, "CREDITS_PER_USD", 100)),
        "auto_topup": {
            "enabled": account.auto_topup_enabled,
            "threshold": float(credits(account.auto_topup_threshold_micros)),
            "amount": float(credits(account.auto_topup_amount_micros)),
        },
    }


class OwnerOrStaff(HasOrgRole):
    """OWNER of the org, or platform staff acting in it."""

    def has_permission(self, request, view) -> bool:
        if (
            request.user
            and request.user.is_authenticated
            and request.user.is_staff
            and getattr(request, "org", None)
        ):
            return True
        return super().has_permission(request, view)


class CreditsView(TenantAPIView):
    scope_area = "billing"
    read_role = Role.MEMBER
    write_role = Role.MEMBER


class CreditBalanceView(CreditsView):
    @extend_schema(
        operation_id="credits_balance",
        tags=_TAGS,
        responses=CreditBalanceOutputSerializer,
        summary="The org's credit balance (MEMBER).",
    )
    def get(self, request):
        return Response(CreditBalanceOutputSerializer(_balance(request.org)).data)


@extend_schema_view(
    list=extend_schema(
        operation_id="credits_transactions_list",
        tags=_TAGS,
        parameters=[
            OpenApiParameter("kind", OpenApiTypes.STR, enum=[k.value for k in CreditTransaction.Kind])
        ],
        summary="The credit ledger, newest first (MEMBER).",
    )
)
class CreditTransactionViewSet(mixins.ListModelMixin, TenantViewSet):
    queryset = CreditTransaction.objects.all()
    serializer_class = CreditTransactionOutputSerializer
    scope_area = "billing"
    read_role = Role.MEMBER

    def base_queryset(self):
        kind = self.request.query_params.get("kind", "")
        if kind and kind not in CreditTransaction.Kind.values:
            from core.errors import ValidationError

            raise ValidationError("Unknown kind.", details={"kind": ["Invalid choice."]})
        return credit_transaction_list(org=self.request.org, kind=kind)


class CreditConsumeView(CreditsView):
    @extend_schema(
        operation_id="credits_consume",
        tags=_TAGS,
        request=CreditConsumeInputSerializer,
        responses=CreditConsumeOutputSerializer,
        summary="Spend credits (MEMBER); 402 when short, a repeated reference_id charges once.",
    )
    def post(self, request):
        body = CreditConsumeInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tx, created = credits_consume(org=request.org, actor=request.user, **body.validated_data)
        return Response(
            CreditConsumeOutputSerializer(
                {"balance": _balance(request.org)["balance"], "transaction": tx, "duplicate": not created}
            ).data
        )


class CreditGrantView(CreditsView):
    permission_classes = [IsAuthenticated, OwnerOrStaff, HasKeyScope]
    write_role = Role.OWNER

    @extend_schema(
        operation_id="credits_grant",
        tags=_TAGS,
        request=CreditGrantInputSerializer,
        responses={201: CreditTransactionOutputSerializer},
        summary="Grant credits (OWNER or platform staff).",
    )
    def post(self, request):
        body = CreditGrantInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tx = credits_grant(org=request.org, actor=request.user, **body.validated_data)
        return Response(CreditTransactionOutputSerializer(tx).data, status=status.HTTP_201_CREATED)


class CreditRefundView(CreditsView):
    permission_classes = [IsAuthenticated, OwnerOrStaff, HasKeyScope]
    write_role = Role.OWNER

    @extend_schema(
        operation_id="credits_refund",
        tags=_TAGS,
        request=CreditRefundInputSerializer,
        responses={201: CreditTransactionOutputSerializer},
        summary="Refund a consume, all or part, once (OWNER or staff).",
    )
    def post(self, request):
        body = CreditRefundInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tx = credits_refund(org=request.org, actor=request.user, **body.validated_data)
        return Response(CreditTransactionOutputSerializer(tx).data, status=status.HTTP_201_CREATED)


class AutoTopupView(CreditsView):
    write_role = Role.OWNER

    @extend_schema(
        operation_id="credits_auto_topup_retrieve",
        tags=_TAGS,
        responses=CreditBalanceOutputSerializer,
        summary="Balance and auto top-up settings (MEMBER).",
    )
    def get(self, request):
        return Response(CreditBalanceOutputSerializer(_balance(request.org)).data)

    @extend_schema(
        operation_id="credits_auto_topup_update",
        tags=_TAGS,
        request=AutoTopupInputSerializer,
        responses=CreditBalanceOutputSerializer,
        summary="Store auto top-up settings (OWNER); charged only when a payment provider is configured.",
    )
    def put(self, request):
        body = AutoTopupInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        credits_auto_topup_update(org=request.org, actor=request.user, **body.validated_data)
        return Response(CreditBalanceOutputSerializer(_balance(request.org)).data)


urlpatterns = [
    path("credits/balance", CreditBalanceView.as_view(), name="credits-balance"),
    path(
        "credits/transactions", CreditTransactionViewSet.as_view({"get": "list"}), name="credits-transactions"
    ),
    path("credits/consume", CreditConsumeView.as_view(), name="credits-consume"),
    path("credits/grant", CreditGrantView.as_view(), name="credits-grant"),
    path("credits/refund", CreditRefundView.as_view(), name="credits-refund"),
    path("credits/auto-topup", AutoTopupView.as_view(), name="credits-auto-topup"),
]
