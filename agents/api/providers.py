"""API of `agents`: LLM providers (bring your own key), their models, the org's model catalogue,
and the org and personal AI settings.

- ``/providers[/{id}]``: VIEWER reads, ADMIN writes; keys are write-only and read back masked.
- ``/providers/{id}/models`` (MEMBER) and ``/models`` (VIEWER): upstream model lists, cached 5 min.
- ``/providers/{id}/verify`` (ADMIN): reachability, or a one-token completion with ``model``.
- ``/org/ai-config`` (ADMIN): primary provider and model, whether personal keys are allowed.
- ``/me/ai-config`` (MEMBER, browser session only): the caller's own key.

Through an API key these need the ``providers`` scope (``models`` for the catalogue).
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import Role
from accounts.permissions import HasKeyScope, HasOrgRole, SessionOnly
from agents.models import Provider
from agents.selectors.providers import (
    model_catalogue,
    org_ai_config_get,
    personal_ai_config_get,
    personal_keys_allowed,
    provider_list,
    provider_models,
)
from agents.services.providers import (
    org_ai_config_reset,
    org_ai_config_update,
    personal_ai_config_delete,
    personal_ai_config_update,
    provider_create,
    provider_delete,
    provider_update,
    provider_verify,
)
from core.pagination import LimitOffsetPagination

from .providers_serializers import (
    ModelCatalogueOutputSerializer,
    OrgAIConfigInputSerializer,
    OrgAIConfigOutputSerializer,
    PersonalAIConfigInputSerializer,
    PersonalAIConfigOutputSerializer,
    ProviderCreateInputSerializer,
    ProviderModelListOutputSerializer,
    ProviderOutputSerializer,
    ProviderUpdateInputSerializer,
    ProviderVerifyInputSerializer,
    ProviderVerifyOutputSerializer,
)

_TAGS = ["providers"]
SESSION_AUTH = [{"session": []}]
PAGE_PARAMETERS = [
    OpenApiParameter("limit", OpenApiTypes.INT, description="Page size (at most 200)."),
    OpenApiParameter("offset", OpenApiTypes.INT, description="Index of the first item."),
]


def _page(request, view, rows: list) -> tuple[list, dict]:
    """Slice an in-memory list with ``?limit=&offset=``; returns (page, the envelope fields)."""
    paginator = LimitOffsetPagination()
    page = paginator.paginate_queryset(rows, request, view=view)
    return page, {"total": paginator.count, "limit": paginator.limit, "offset": paginator.offset}


# --- /providers ------------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        operation_id="providers_list", tags=_TAGS, summary="The org's providers, keys masked."
    ),
    create=extend_schema(
        operation_id="providers_create",
        tags=_TAGS,
        request=ProviderCreateInputSerializer,
        responses={201: ProviderOutputSerializer},
        summary="Add a provider (ADMIN).",
        description=(
            "`api_key` is write-only (answers show `api_key_masked`). `api_base` must not point at "
            "a private, loopback or link-local address unless the operator allowlisted it "
            "(400 `ERR_OUTBOUND_BLOCKED`). A name already in use answers 409 `ERR_PROVIDER_EXISTS`."
        ),
    ),
    retrieve=extend_schema(operation_id="providers_retrieve", tags=_TAGS),
    partial_update=extend_schema(
        operation_id="providers_partial_update",
        tags=_TAGS,
        request=ProviderUpdateInputSerializer,
        responses=ProviderOutputSerializer,
        summary="Change a provider (ADMIN); a new endpoint or key clears its verified flag.",
    ),
    destroy=extend_schema(
        operation_id="providers_destroy",
        tags=_TAGS,
        responses={204: OpenApiResponse(description="Deleted.")},
        summary="Delete a provider (ADMIN).",
    ),
)
class ProviderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """``/api/v1/providers`` and the per-provider actions."""

    queryset = Provider.objects.all()
    serializer_class = ProviderOutputSerializer
    scope_area = "providers"
    read_role = Role.VIEWER
    write_role = Role.ADMIN
    action_roles = {"models": Role.MEMBER, "verify": Role.ADMIN}

    def base_queryset(self):
        return provider_list(org=self.request.org)

    def create(self, request):
        body = ProviderCreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        provider = provider_create(org=request.org, actor=request.user, **body.validated_data)
        return Response(ProviderOutputSerializer(provider).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request, id):
        provider = self.get_object()
        body = ProviderUpdateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        provider = provider_update(provider=provider, actor=request.user, **body.validated_data)
        return Response(ProviderOutputSerializer(provider).data)

    def destroy(self, request, id):
        provider_delete(provider=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="providers_models_list",
        tags=_TAGS,
        parameters=PAGE_PARAMETERS,
        responses=ProviderModelListOutputSerializer,
        summary="The provider's upstream model list (MEMBER; cached five minutes).",
        description="Upstream failures answer 502 `ERR_PROVIDER_UNAVAILABLE` or 424 `ERR_PROVIDER_AUTH`.",
    )
    def models(self, request, id):
        names = provider_models(provider=self.get_object())
        page, envelope = _page(request, self, [{"id": name} for name in names])
        return Response(ProviderModelListOutputSerializer({"items": page, **envelope}).data)

    @extend_schema(
        operation_id="providers_verify",
        tags=_TAGS,
        request=ProviderVerifyInputSerializer,
        responses=ProviderVerifyOutputSerializer,
        summary="Verify a provider (ADMIN): `{}` checks reachability, `{model}` makes a one-token call.",
        description="Stores the verdict on the provider (`is_verified`, `verified_at`, `last_error`).",
    )
    def verify(self, request, id):
        provider = self.get_object()
        body = ProviderVerifyInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = provider_verify(
            provider=provider,
            actor=request.user,
            model=(body.validated_data.get("model") or "").strip() or None,
        )
        return Response(ProviderVerifyOutputSerializer(outcome).data)


# --- /models: the org's catalogue ---------------------------------------------------------------------


class ModelCatalogueView(TenantAPIView):
    """Every model of the org's enabled providers; a failing provider is reported, not fatal."""

    scope_area = "models"
    read_role = Role.VIEWER

    @extend_schema(
        operation_id="models_list",
        tags=["models"],
        parameters=PAGE_PARAMETERS,
        responses=ModelCatalogueOutputSerializer,
        summary="Live model catalogue across the org's enabled providers (cached five minutes).",
    )
    def get(self, request):
        catalogue = model_catalogue(org=request.org)
        page, envelope = _page(request, self, catalogue.items)
        return Response(
            ModelCatalogueOutputSerializer({"items": page, **envelope, "errors": catalogue.errors}).data
        )


# --- /org/ai-config -------------------------------------------------------------------------------------


class OrgAIConfigView(TenantAPIView):
    """The org's primary provider and model, and whether members may bring personal keys."""

    scope_area = "providers"
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def _render(self, request):
        return OrgAIConfigOutputSerializer(org_ai_config_get(org=request.org)).data

    @extend_schema(
        operation_id="org_ai_config_retrieve", tags=["ai-config"], responses=OrgAIConfigOutputSerializer
    )
    def get(self, request):
        return Response(self._render(request))

    @extend_schema(
        operation_id="org_ai_config_update",
        tags=["ai-config"],
        request=OrgAIConfigInputSerializer,
        responses=OrgAIConfigOutputSerializer,
        summary="Set the org's AI config (fields left out keep their value).",
        description="`primary_provider` must be a provider of the org (else 400 `ERR_INVALID_PROVIDER`).",
    )
    def put(self, request):
        body = OrgAIConfigInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = dict(body.validated_data)
        if "primary_provider" in fields:
            fields["primary_provider_id"] = fields.pop("primary_provider")
        org_ai_config_update(org=request.org, actor=request.user, **fields)
        return Response(self._render(request))

    @extend_schema(
        operation_id="org_ai_config_reset",
        tags=["ai-config"],
        request=None,
        responses={204: OpenApiResponse(description="Back to the defaults.")},
    )
    def delete(self, request):
        org_ai_config_reset(org=request.org, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- /me/ai-config ---------------------------------------------------------------------------------------


class MyAIConfigView(TenantAPIView):
    """The caller's personal key (BYOK), used first where the org allows personal keys."""

    permission_classes = [IsAuthenticated, SessionOnly, HasOrgRole, HasKeyScope]
    scope_area = "providers"
    read_role = Role.MEMBER
    write_role = Role.MEMBER

    def _render(self, request):
        return PersonalAIConfigOutputSerializer.render(
            personal_ai_config_get(user=request.user), allowed=personal_keys_allowed(org=request.org)
        )

    @extend_schema(
        operation_id="me_ai_config_retrieve",
        tags=["ai-config"],
        auth=SESSION_AUTH,
        responses=PersonalAIConfigOutputSerializer,
        summary="Your personal key settings (masked) and whether the org allows them.",
    )
    def get(self, request):
        return Response(self._render(request))

    @extend_schema(
        operation_id="me_ai_config_partial_update",
        tags=["ai-config"],
        auth=SESSION_AUTH,
        request=PersonalAIConfigInputSerializer,
        responses=PersonalAIConfigOutputSerializer,
        summary="Save your personal key (403 `ERR_PERSONAL_KEYS_DISABLED` unless the org allows them).",
    )
    def patch(self, request):
        body = PersonalAIConfigInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        personal_ai_config_update(user=request.user, org=request.org, **body.validated_data)
        return Response(self._render(request))

    @extend_schema(
        operation_id="me_ai_config_destroy",
        tags=["ai-config"],
        auth=SESSION_AUTH,
        request=None,
        responses={204: OpenApiResponse(description="Forgotten.")},
    )
    def delete(self, request):
        personal_ai_config_delete(user=request.user, org=request.org)
        return Response(status=status.HTTP_204_NO_CONTENT)


provider_list_view = ProviderViewSet.as_view({"get": "list", "post": "create"})
provider_detail_view = ProviderViewSet.as_view(
    {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}
)

urlpatterns = [
    path("providers", provider_list_view, name="providers"),
    path("providers/<uuid:id>", provider_detail_view, name="provider"),
    path("providers/<uuid:id>/models", ProviderViewSet.as_view({"get": "models"}), name="provider-models"),
    path("providers/<uuid:id>/verify", ProviderViewSet.as_view({"post": "verify"}), name="provider-verify"),
    path("models", ModelCatalogueView.as_view(), name="models"),
    path("org/ai-config", OrgAIConfigView.as_view(), name="org-ai-config"),
    path("me/ai-config", MyAIConfigView.as_view(), name="me-ai-config"),
]
