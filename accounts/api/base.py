"""The base every org-scoped API view builds on: tenancy that fails closed, in one place.

``TenantViewSet`` filters every queryset by ``request.org``; subclasses describe their rows with
``queryset`` or ``base_queryset()`` and may not override ``get_queryset`` (the class refuses to be
defined). The escape hatch is named for what it is: ``dangerously_unscoped_queryset``.
"""

from __future__ import annotations

from rest_framework import viewsets
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from accounts.models import Role
from accounts.permissions import HasKeyScope, HasOrgRole

TENANT_PERMISSIONS = [IsAuthenticated, HasOrgRole, HasKeyScope]


class TenantScopedMixin:
    """Role and scope checks plus the org filter. ``tenant_field`` names the path to the org."""

    permission_classes = TENANT_PERMISSIONS
    tenant_field = "org"
    read_role = Role.VIEWER
    write_role = Role.MEMBER
    action_roles: dict[str, str] = {}
    scope_area: str | None = None
    lookup_field = "pk"
    lookup_url_kwarg = "id"
    lookup_value_converter = "uuid"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides get_queryset(); override base_queryset() instead so the "
                "org filter cannot be lost (or dangerously_unscoped_queryset() if you must)."
            )

    def base_queryset(self):
        """The rows before tenant scoping; subclasses add select_related and filters here."""
        return self.queryset.all()

    def dangerously_unscoped_queryset(self):
        return self.base_queryset()

    def get_queryset(self):
        return self.base_queryset().filter(**{self.tenant_field: self.request.org})


class TenantViewSet(TenantScopedMixin, viewsets.GenericViewSet):
    """Declarative org-scoped viewsets: combine with the mixins you need."""


class TenantAPIView(TenantScopedMixin, APIView):
    """Org-scoped endpoint that is not a model resource (e.g. ``/api/v1/org``)."""

    queryset = None
