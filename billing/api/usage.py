"""API of usage metering, pricing and spend caps (ADMIN; API keys need the ``usage`` scope).

- ``/usage/summary`` · ``/usage/timeseries`` · ``/usage/breakdown``: reports over ``from``/``to``
  (default the last 30 days), filtered by agent, provider, model, user, channel or key.
- ``/model-pricing``: the shipped catalogue; ``/model-pricing/overrides[/{id}]``: the org's prices.
- ``/usage-caps/policies[/{id}]``: spend caps (managed ones answer 409 to PATCH/DELETE);
  ``/usage-caps/utilization`` and ``/usage-caps/events``.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import Role
from accounts.services.audit import audit_record
from billing.catalogue import catalogue_version, price_catalogue
from billing.models import PriceOverride, UsageCapEvent, UsageCapPolicy
from billing.selectors.caps import usage_cap_event_list, usage_cap_policy_list, usage_cap_utilization
from billing.selectors.state import invalidate_org_state
from billing.selectors.usage import usage_breakdown, usage_summary, usage_timeseries
from billing.services.caps import usage_cap_policy_create, usage_cap_policy_delete, usage_cap_policy_update
from core.errors import ConflictError, ValidationError
from core.pagination import LimitOffsetPagination

from .serializers import (
    CatalogueOutputSerializer,
    PriceOverrideInputSerializer,
    PriceOverrideOutputSerializer,
    UsageBreakdownOutputSerializer,
    UsageBreakdownQuerySerializer,
    UsageCapEventOutputSerializer,
    UsageCapPolicyInputSerializer,
    UsageCapPolicyOutputSerializer,
    UsageCapPolicyUpdateSerializer,
    UsageCapUtilizationOutputSerializer,
    UsageQuerySerializer,
    UsageSummaryOutputSerializer,
    UsageTimeseriesOutputSerializer,
    UsageTimeseriesQuerySerializer,
)

MAX_RANGE = timedelta(days=400)


def _period(query: UsageQuerySerializer) -> tuple:
    data = query.validated_data
    end = data.get("to") or timezone.now()
    start = data.get("from") or end - timedelta(days=30)
    if start >= end:
        raise ValidationError("from must be before to.", details={"from": ["Must be before to."]})
    if end - start > MAX_RANGE:
        raise ValidationError("The period may span at most 400 days.", details={"from": ["Period too long."]})
    filters = {k: data[k] for k in ("agent", "provider", "model", "user", "channel", "key") if data.get(k)}
    return start, end, filters


class UsageReportView(TenantAPIView):
    scope_area = "usage"
    read_role = Role.ADMIN
    write_role = Role.ADMIN


class UsageSummaryView(UsageReportView):
    @extend_schema(
        operation_id="usage_summary",
        tags=["usage"],
        parameters=[UsageQuerySerializer],
        responses=UsageSummaryOutputSerializer,
        summary="Usage totals over a period (ADMIN).",
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end, filters = _period(query)
        totals = usage_summary(org=request.org, start=start, end=end, filters=filters)
        return Response(UsageSummaryOutputSerializer({"start": start, "end": end, **totals}).data)


class UsageTimeseriesView(UsageReportView):
    @extend_schema(
        operation_id="usage_timeseries",
        tags=["usage"],
        parameters=[UsageTimeseriesQuerySerializer],
        responses=UsageTimeseriesOutputSerializer,
        summary="Usage per hour or day bucket (ADMIN).",
    )
    def get(self, request):
        query = UsageTimeseriesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end, filters = _period(query)
        bucket = query.validated_data["bucket"]
        if bucket == "hour" and end - start > timedelta(days=62):
            raise ValidationError(
                "Hourly buckets cover at most 62 days.", details={"bucket": ["Period too long."]}
            )
        items = usage_timeseries(org=request.org, start=start, end=end, bucket=bucket, filters=filters)
        return Response(
            UsageTimeseriesOutputSerializer(
                {"start": start, "end": end, "bucket": bucket, "items": items}
            ).data
        )


class UsageBreakdownView(UsageReportView):
    @extend_schema(
        operation_id="usage_breakdown",
        tags=["usage"],
        parameters=[UsageBreakdownQuerySerializer],
        responses=UsageBreakdownOutputSerializer,
        summary="Usage per provider, model, agent, user, channel or key (ADMIN).",
    )
    def get(self, request):
        query = UsageBreakdownQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        start, end, filters = _period(query)
        group_by = query.validated_data["group_by"]
        items = usage_breakdown(org=request.org, start=start, end=end, group_by=group_by, filters=filters)
        return Response(
            UsageBreakdownOutputSerializer(
                {"start": start, "end": end, "group_by": group_by, "items": items}
            ).data
        )


# --- pricing -----------------------------------------------------------------------------------


class ModelPricingView(UsageReportView):
    @extend_schema(
        operation_id="model_pricing_catalogue",
        tags=["usage"],
        parameters=[OpenApiParameter("model", OpenApiTypes.STR, description="Only ids containing this.")],
        responses=CatalogueOutputSerializer,
        summary="The shipped model price catalogue, USD per million tokens (ADMIN).",
    )
    def get(self, request):
        needle = (request.query_params.get("model") or "").lower()
        items = [
            {
                "model": entry["model"],
                "vendor": entry.get("vendor", ""),
                "input_per_million": entry["input"],
                "output_per_million": entry["output"],
            }
            for entry in price_catalogue().values()
            if needle in entry["model"].lower()
        ]
        return Response(CatalogueOutputSerializer({"version": catalogue_version(), "items": items}).data)


def _override_save(*, org, actor, data, override: PriceOverride | None = None) -> tuple[PriceOverride, bool]:
    created = override is None
    with transaction.atomic():
        if override is None:
            override = PriceOverride.objects.filter(
                org=org, model=data["model"], provider_type=data.get("provider_type", "")
            ).first()
            created = override is None
            override = override or PriceOverride(org=org)
        before = None if created else PriceOverrideOutputSerializer(override).data
        for name in ("model", "provider_type", "input_per_million", "output_per_million"):
            if name in data:
                setattr(override, name, data[name])
        try:
            with transaction.atomic():
                override.save()
        except IntegrityError as exc:
            raise ConflictError(
                "An override for this model and provider type exists.", code="ERR_OVERRIDE_EXISTS"
            ) from exc
        audit_record(
            org=org,
            actor=actor,
            action="model_price.created" if created else "model_price.updated",
            entity=override,
            before=before,
            after=PriceOverrideOutputSerializer(override).data,
        )
    invalidate_org_state(org.pk)
    return override, created


@extend_schema_view(
    list=extend_schema(
        operation_id="model_pricing_overrides_list",
        tags=["usage"],
        summary="The org's price overrides (ADMIN).",
    ),
    retrieve=extend_schema(operation_id="model_pricing_overrides_retrieve", tags=["usage"]),
)
class PriceOverrideViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """``/model-pricing/overrides[/{id}]``."""

    queryset = PriceOverride.objects.all()
    serializer_class = PriceOverrideOutputSerializer
    pagination_class = LimitOffsetPagination
    scope_area = "usage"
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    @extend_schema(
        operation_id="model_pricing_overrides_create",
        tags=["usage"],
        request=PriceOverrideInputSerializer,
        responses={200: PriceOverrideOutputSerializer, 201: PriceOverrideOutputSerializer},
        summary="Same as PUT on the collection: set the org's price of a model (ADMIN).",
    )
    def create(self, request):
        return self.upsert(request)

    @extend_schema(
        operation_id="model_pricing_overrides_upsert",
        tags=["usage"],
        request=PriceOverrideInputSerializer,
        responses={200: PriceOverrideOutputSerializer, 201: PriceOverrideOutputSerializer},
        summary="Set the org's price of a model (ADMIN): 201 new, 200 replaced.",
    )
    def upsert(self, request):
        body = PriceOverrideInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        override, created = _override_save(org=request.org, actor=request.user, data=body.validated_data)
        return Response(
            PriceOverrideOutputSerializer(override).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        operation_id="model_pricing_overrides_update",
        tags=["usage"],
        request=PriceOverrideInputSerializer,
        responses=PriceOverrideOutputSerializer,
        summary="Replace one override (ADMIN).",
    )
    def update(self, request, id):
        override = self.get_object()
        body = PriceOverrideInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        override, _ = _override_save(
            org=request.org, actor=request.user, data=body.validated_data, override=override
        )
        return Response(PriceOverrideOutputSerializer(override).data)

    @extend_schema(
        operation_id="model_pricing_overrides_destroy",
        tags=["usage"],
        responses={204: OpenApiResponse(description="Deleted.")},
        summary="Back to the catalogue price (ADMIN).",
    )
    def destroy(self, request, id):
        override = self.get_object()
        with transaction.atomic():
            audit_record(
                org=request.org,
                actor=request.user,
                action="model_price.deleted",
                entity=override,
                before=PriceOverrideOutputSerializer(override).data,
            )
            override.delete()
        invalidate_org_state(request.org.pk)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- caps --------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        operation_id="usage_caps_policies_list", tags=["usage"], summary="Spend caps (ADMIN)."
    ),
    retrieve=extend_schema(operation_id="usage_caps_policies_retrieve", tags=["usage"]),
    create=extend_schema(
        operation_id="usage_caps_policies_create",
        tags=["usage"],
        request=UsageCapPolicyInputSerializer,
        responses={201: UsageCapPolicyOutputSerializer},
        summary="Add a spend cap (ADMIN).",
        description=(
            "`window` hour/day/week/month (UTC-aligned), `max_tokens` and/or `max_cost_usd`, `scope` "
            "org/agent/provider/model/user/api_key with `scope_value` (the id, a provider type, or a model "
            "name). Calls over a cap answer 429 `ERR_USAGE_CAP_EXCEEDED`."
        ),
    ),
    partial_update=extend_schema(
        operation_id="usage_caps_policies_partial_update",
        tags=["usage"],
        request=UsageCapPolicyUpdateSerializer,
        responses=UsageCapPolicyOutputSerializer,
        summary="Change a spend cap (ADMIN); managed policies answer 409.",
    ),
    destroy=extend_schema(
        operation_id="usage_caps_policies_destroy",
        tags=["usage"],
        responses={204: OpenApiResponse(description="Deleted.")},
        summary="Remove a spend cap (ADMIN); managed policies answer 409.",
    ),
)
class UsageCapPolicyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """``/usage-caps/policies[/{id}]``."""

    queryset = UsageCapPolicy.objects.all()
    serializer_class = UsageCapPolicyOutputSerializer
    pagination_class = LimitOffsetPagination
    scope_area = "usage"
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def base_queryset(self):
        return usage_cap_policy_list(org=self.request.org)

    def create(self, request):
        body = UsageCapPolicyInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        policy = usage_cap_policy_create(org=request.org, actor=request.user, **body.to_fields())
        return Response(UsageCapPolicyOutputSerializer(policy).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, id):
        policy = self.get_object()
        body = UsageCapPolicyUpdateSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        policy = usage_cap_policy_update(policy=policy, actor=request.user, **body.to_fields())
        return Response(UsageCapPolicyOutputSerializer(policy).data)

    def destroy(self, request, id):
        usage_cap_policy_delete(policy=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UsageCapUtilizationView(UsageReportView):
    @extend_schema(
        operation_id="usage_caps_utilization",
        tags=["usage"],
        responses=UsageCapUtilizationOutputSerializer,
        summary="Each enabled cap's current window: used, reserved, max, reset time (ADMIN).",
    )
    def get(self, request):
        items = usage_cap_utilization(org=request.org)
        return Response(UsageCapUtilizationOutputSerializer({"items": items}).data)


@extend_schema_view(
    list=extend_schema(
        operation_id="usage_caps_events_list",
        tags=["usage"],
        parameters=[
            OpenApiParameter("decision", OpenApiTypes.STR, enum=["allow", "block"]),
            OpenApiParameter("policy", OpenApiTypes.UUID),
        ],
        summary="Allow and block decisions of the caps, newest first (ADMIN).",
    )
)
class UsageCapEventViewSet(mixins.ListModelMixin, TenantViewSet):
    queryset = UsageCapEvent.objects.all()
    serializer_class = UsageCapEventOutputSerializer
    pagination_class = LimitOffsetPagination
    scope_area = "usage"
    read_role = Role.ADMIN

    def base_queryset(self):
        decision = self.request.query_params.get("decision", "")
        if decision not in ("", "allow", "block"):
            raise ValidationError("decision is allow or block.", details={"decision": ["Invalid choice."]})
        policy = self.request.query_params.get("policy") or None
        if policy:
            import uuid

            try:
                uuid.UUID(policy)
            except ValueError as exc:
                raise ValidationError(
                    "policy must be an id.", details={"policy": ["Not a valid id."]}
                ) from exc
        return usage_cap_event_list(org=self.request.org, decision=decision, policy=policy)


urlpatterns = [
    path("usage/summary", UsageSummaryView.as_view(), name="usage-summary"),
    path("usage/timeseries", UsageTimeseriesView.as_view(), name="usage-timeseries"),
    path("usage/breakdown", UsageBreakdownView.as_view(), name="usage-breakdown"),
    path("model-pricing", ModelPricingView.as_view(), name="model-pricing"),
    path(
        "model-pricing/overrides",
        PriceOverrideViewSet.as_view({"get": "list", "put": "upsert", "post": "create"}),
        name="model-pricing-overrides",
    ),
    path(
        "model-pricing/overrides/<uuid:id>",
        PriceOverrideViewSet.as_view({"get": "retrieve", "put": "update", "delete": "destroy"}),
        name="model-pricing-override",
    ),
    path(
        "usage-caps/policies",
        UsageCapPolicyViewSet.as_view({"get": "list", "post": "create"}),
        name="usage-cap-policies",
    ),
    path(
        "usage-caps/policies/<uuid:id>",
        UsageCapPolicyViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"}),
        name="usage-cap-policy",
    ),
    path("usage-caps/utilization", UsageCapUtilizationView.as_view(), name="usage-cap-utilization"),
    path("usage-caps/events", UsageCapEventViewSet.as_view({"get": "list"}), name="usage-cap-events"),
]
