"""API of `accounts`: API keys (``/api/v1/api-keys``) and the ``api-keys/ping`` connectivity check.

Who sees what: a MEMBER works with their own keys, an ADMIN or OWNER with every key of the org;
anyone else's key answers 404. Making, rotating and rolling a key never yields more than the caller
has (see ``accounts.services.keys``): asking for more answers 403 ``ERR_ROLE_REQUIRED`` (role) or
``ERR_SCOPE_REQUIRED`` (a scoped key handing out scopes it lacks). Through an API key these
endpoints need the ``keys:read`` / ``keys:write`` scopes.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import TenantViewSet
from accounts.models import ApiKey, Role
from accounts.scopes import describe_areas
from accounts.selectors.keys import api_key_list, api_key_usage_list
from accounts.services import keys as key_services

from .keys_serializers import (
    ApiKeyCreateInputSerializer,
    ApiKeyListFilterSerializer,
    ApiKeyOutputSerializer,
    ApiKeyPingOutputSerializer,
    ApiKeyRotateInputSerializer,
    ApiKeySecretOutputSerializer,
    ApiKeyUpdateInputSerializer,
    ApiKeyUsageOutputSerializer,
)

_TAGS = ["api-keys"]
_CREATE_DESCRIPTION = (
    "Make a key. The answer's `key` is the whole secret key and is shown only here (and in the "
    "answers of rotate and roll). `service` and `agent` keys need ADMIN; no key may act above your "
    "current role (403 `ERR_ROLE_REQUIRED`); `agent` keys need an existing `agent` of the org "
    "(400 `ERR_AGENT_NOT_FOUND`); unknown scopes answer 400 `ERR_INVALID_SCOPE`. Scope areas:\n\n"
    + describe_areas()
)


def _acting(request) -> dict:
    """The role and scopes the caller acts with, for the services' no-escalation checks."""
    key = request.auth if isinstance(request.auth, ApiKey) else None
    return {"actor_role": request.role, "actor_scopes": list(key.scopes or []) if key is not None else None}


def _with_secret(key: ApiKey, raw: str) -> dict:
    key.raw_key = raw
    return ApiKeySecretOutputSerializer(key).data


@extend_schema_view(
    list=extend_schema(
        operation_id="api_keys_list",
        tags=_TAGS,
        summary="Keys you may see (yours; every key of the org for ADMIN and OWNER), masked.",
        parameters=[ApiKeyListFilterSerializer],
        responses=ApiKeyOutputSerializer(many=True),
    ),
    create=extend_schema(
        operation_id="api_keys_create",
        tags=_TAGS,
        summary="Create a key (its secret is returned once).",
        description=_CREATE_DESCRIPTION,
        request=ApiKeyCreateInputSerializer,
        responses={201: ApiKeySecretOutputSerializer},
    ),
    retrieve=extend_schema(operation_id="api_keys_retrieve", tags=_TAGS, responses=ApiKeyOutputSerializer),
    partial_update=extend_schema(
        operation_id="api_keys_partial_update",
        tags=_TAGS,
        summary="Rename, rescope, pause or resume a key.",
        request=ApiKeyUpdateInputSerializer,
        responses=ApiKeyOutputSerializer,
    ),
    destroy=extend_schema(
        operation_id="api_keys_destroy",
        tags=_TAGS,
        summary="Delete a key (it stops working at once).",
        responses={204: OpenApiResponse(description="Deleted.")},
    ),
)
class ApiKeyViewSet(TenantViewSet):
    """``/api/v1/api-keys`` and the per-key actions."""

    queryset = ApiKey.objects.all()
    serializer_class = ApiKeyOutputSerializer
    read_role = Role.MEMBER
    write_role = Role.MEMBER
    scope_area = "keys"

    def base_queryset(self):
        """Only the keys the caller may see (the selector decides); detail routes 404 the rest."""
        return api_key_list(org=self.request.org, user=self.request.user, role=self.request.role)

    def list(self, request):
        """Keys the caller may see, filtered by ``?kind=`` and ``?user=``."""
        filters = ApiKeyListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        keys = api_key_list(
            org=request.org,
            user=request.user,
            role=request.role,
            kind=filters.validated_data.get("kind"),
            user_id=filters.validated_data.get("user"),
        )
        page = self.paginate_queryset(keys)
        return self.get_paginated_response(ApiKeyOutputSerializer(page, many=True).data)

    def create(self, request):
        """Make a key with the caller's role and scopes as its ceiling."""
        body = ApiKeyCreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        key, raw = key_services.api_key_create(
            org=request.org,
            actor=request.user,
            name=data["name"],
            kind=data["kind"],
            role=data["role"],
            scopes=data.get("scopes"),
            agent_id=data.get("agent"),
            autonomy=data["autonomy"],
            expires_at=data.get("expires_at"),
            **_acting(request),
        )
        return Response(_with_secret(key, raw), status=status.HTTP_201_CREATED)

    def retrieve(self, request, id):
        """One key, masked."""
        return Response(ApiKeyOutputSerializer(self.get_object()).data)

    def partial_update(self, request, id):
        """Rename, rescope, pause or resume."""
        body = ApiKeyUpdateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key = key_services.api_key_update(
            key=self.get_object(), actor=request.user, **body.validated_data, **_acting(request)
        )
        return Response(ApiKeyOutputSerializer(key).data)

    def destroy(self, request, id):
        """Soft delete: the key stops working and leaves every list."""
        key_services.api_key_delete(key=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="api_keys_revoke",
        tags=_TAGS,
        summary="Revoke a key now, for good.",
        request=None,
        responses=ApiKeyOutputSerializer,
    )
    def revoke(self, request, id):
        """Kill the key now, for good."""
        key = key_services.api_key_revoke(key=self.get_object(), actor=request.user)
        return Response(ApiKeyOutputSerializer(key).data)

    @extend_schema(
        operation_id="api_keys_rotate",
        tags=_TAGS,
        summary="New secret; the old one keeps working for grace_hours (default 24).",
        description=(
            "Answers the key with its new whole secret in `key`. A revoked key answers 409 "
            "`ERR_KEY_REVOKED`. A personal key can only be rotated by its own user."
        ),
        request=ApiKeyRotateInputSerializer,
        responses=ApiKeySecretOutputSerializer,
    )
    def rotate(self, request, id):
        """New secret; the old one works for ``grace_hours`` more."""
        body = ApiKeyRotateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        key, raw = key_services.api_key_rotate(
            key=self.get_object(),
            actor=request.user,
            grace_hours=body.validated_data["grace_hours"],
            **_acting(request),
        )
        return Response(_with_secret(key, raw))

    @extend_schema(
        operation_id="api_keys_roll",
        tags=_TAGS,
        summary="New secret; the old one dies now.",
        description="A revoked key answers 409 `ERR_KEY_REVOKED`. A personal key only by its own user.",
        request=None,
        responses=ApiKeySecretOutputSerializer,
    )
    def roll(self, request, id):
        """New secret; the old one dies now."""
        key, raw = key_services.api_key_roll(key=self.get_object(), actor=request.user, **_acting(request))
        return Response(_with_secret(key, raw))

    @extend_schema(
        operation_id="api_keys_usage",
        tags=_TAGS,
        summary="The key's request log, newest first.",
        responses=ApiKeyUsageOutputSerializer(many=True),
    )
    def usage(self, request, id):
        """The key's request log, newest first."""
        rows = api_key_usage_list(key=self.get_object())
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ApiKeyUsageOutputSerializer(page, many=True).data)


class ApiKeyPingView(APIView):
    """A no-op that reports whether the request carried a valid credential.

    Public (anonymous callers get ``authenticated: false``), but a key that is presented is checked
    like anywhere else, so a bad key answers 401. Scripts use it to test a key without side effects;
    ``bench/auth_overhead.py`` uses it to measure what key authentication costs.
    """

    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="api_keys_ping",
        tags=_TAGS,
        summary="Connectivity check: is this key (or session) accepted?",
        description=(
            "Answers 200 `{authenticated, key}` without a credential too; a presented key that is "
            "invalid, revoked or expired answers 401 as on every other endpoint."
        ),
        responses=ApiKeyPingOutputSerializer,
    )
    def get(self, request):
        """Whether the request's credential was accepted, and which key it was."""
        key = request.auth if isinstance(request.auth, ApiKey) else None
        return Response(
            {
                "authenticated": bool(request.user and request.user.is_authenticated),
                "key": key_services.api_key_prefix(key) if key is not None else None,
            }
        )


_collection = ApiKeyViewSet.as_view({"get": "list", "post": "create"})
_detail = ApiKeyViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})

urlpatterns = [
    path("api-keys", _collection, name="api-keys"),
    path("api-keys/ping", ApiKeyPingView.as_view(), name="api-keys-ping"),
    path("api-keys/<uuid:id>", _detail, name="api-key-detail"),
    path("api-keys/<uuid:id>/revoke", ApiKeyViewSet.as_view({"post": "revoke"}), name="api-key-revoke"),
    path("api-keys/<uuid:id>/rotate", ApiKeyViewSet.as_view({"post": "rotate"}), name="api-key-rotate"),
    path("api-keys/<uuid:id>/roll", ApiKeyViewSet.as_view({"post": "roll"}), name="api-key-roll"),
    path("api-keys/<uuid:id>/usage", ApiKeyViewSet.as_view({"get": "usage"}), name="api-key-usage"),
]
