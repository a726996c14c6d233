"""API of `accounts`: the caller's own profile, permissions, active org, export and deletion."""

from __future__ import annotations

import io
import json
import zipfile

from django.contrib.auth import logout
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import roles
from accounts.models import ApiKey
from accounts.permissions import HasKeyScope, SessionOnly
from accounts.selectors.me import my_memberships, user_export_job_get
from accounts.services import me as me_services
from core.errors import ConflictError, PermissionDeniedError
from core.models import Job

from .me_serializers import (
    MeActiveOrgInputSerializer,
    MeActiveOrgOutputSerializer,
    MeExportQuerySerializer,
    MeExportStartedSerializer,
    MeOutputSerializer,
    MePermissionsOutputSerializer,
    MeUpdateInputSerializer,
)


def _require_person(request) -> None:
    """Changing a person's account takes the person: a session, or their own personal key.

    A service or agent key acts for an org, not for the human who happened to create it.
    """
    key = request.auth if isinstance(request.auth, ApiKey) else None
    if key is not None and key.kind != ApiKey.Kind.PERSONAL:
        raise PermissionDeniedError(
            "Only a session or a personal API key may change an account.", code="ERR_PERSONAL_KEY_REQUIRED"
        )


class MeView(APIView):
    """The caller's profile: read it, change it, or erase the account."""

    permission_classes = [IsAuthenticated, HasKeyScope]
    scope_area = "me"

    @extend_schema(operation_id="me_retrieve", tags=["me"], responses=MeOutputSerializer)
    def get(self, request):
        return Response(MeOutputSerializer(request.user).data)

    @extend_schema(
        operation_id="me_partial_update",
        tags=["me"],
        request=MeUpdateInputSerializer,
        responses=MeOutputSerializer,
        summary="Change display name, avatar URL, language or timezone.",
    )
    def patch(self, request):
        _require_person(request)
        data = MeUpdateInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        user = me_services.user_update(user=request.user, data=dict(data.validated_data))
        return Response(MeOutputSerializer(user).data)

    @extend_schema(
        operation_id="me_destroy",
        tags=["me"],
        request=None,
        responses={
            204: OpenApiResponse(description="The account and the orgs where it was alone are gone."),
            409: OpenApiResponse(description="ERR_SOLE_OWNER: only owner of an org with other members."),
        },
        summary="Erase the caller's account.",
    )
    def delete(self, request):
        _require_person(request)
        me_services.user_delete(user=request.user)
        if isinstance(request.auth, ApiKey):
            # The key went with the account: there is no request log left to append this call to.
            request._request.api_key = None
        else:
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MePermissionsView(APIView):
    """What the caller may do, so a console can hide what would be refused."""

    permission_classes = [IsAuthenticated, HasKeyScope]
    scope_area = "me"

    @extend_schema(
        operation_id="me_permissions",
        tags=["me"],
        responses=MePermissionsOutputSerializer,
        summary="The caller's orgs and roles, and what they may do in the current org.",
    )
    def get(self, request):
        user = request.user
        key = request.auth if isinstance(request.auth, ApiKey) else None
        org, role = getattr(request, "org", None), getattr(request, "role", None)
        if key is not None:
            # A key acts in its own org only; the creator's other orgs are none of its business.
            orgs = [{"id": org.pk, "name": org.name, "role": role}]
            permissions = roles.permissions_for_key(role, key.scopes)
        else:
            orgs = [{"id": m.org_id, "name": m.org.name, "role": m.role} for m in my_memberships(user=user)]
            permissions = roles.permissions_for_role(role)
        body = {
            "user": {"id": user.pk, "email": user.email},
            "orgs": orgs,
            "current": {
                "org": {"id": org.pk, "name": org.name} if org is not None else None,
                "role": role,
                "permissions": permissions if org is not None else [],
            },
        }
        return Response(MePermissionsOutputSerializer(body).data)


class MeActiveOrgView(APIView):
    """Which org a browser session acts in when no X-Org-Id header says otherwise."""

    permission_classes = [IsAuthenticated, SessionOnly]

    @extend_schema(
        operation_id="me_active_org_update",
        tags=["me"],
        request=MeActiveOrgInputSerializer,
        responses={200: MeActiveOrgOutputSerializer, 404: OpenApiResponse(description="Not a member.")},
        summary="Choose the org the session acts in.",
    )
    def put(self, request):
        data = MeActiveOrgInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = me_services.user_active_org_set(user=request.user, org_id=data.validated_data["org_id"])
        body = {"org": {"id": membership.org_id, "name": membership.org.name}, "role": membership.role}
        return Response(MeActiveOrgOutputSerializer(body).data)


def export_archive(job: Job) -> bytes:
    """The zip of a finished export: one JSON file per section."""
    files = (job.result or {}).get("files", {})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            archive.writestr(
                name, json.dumps(files[name], cls=DjangoJSONEncoder, indent=2, ensure_ascii=False)
            )
    return buffer.getvalue()


class MeExportView(APIView):
    """The GDPR archive: built by a job, downloaded once it has finished."""

    permission_classes = [IsAuthenticated, SessionOnly]

    @extend_schema(
        operation_id="me_export",
        tags=["me"],
        parameters=[
            OpenApiParameter("job", OpenApiTypes.UUID, required=False, description="A finished export job."),
        ],
        responses={
            (200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="The archive."),
            202: MeExportStartedSerializer,
            404: OpenApiResponse(description="No such export of the caller."),
            409: OpenApiResponse(description="ERR_EXPORT_NOT_READY: the job has not finished."),
        },
        summary="GDPR archive: start building it (202 + job), then download it with ?job=.",
    )
    def get(self, request):
        query = MeExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        job_id = query.validated_data.get("job")
        if job_id is None:
            job = me_services.user_export_start(user=request.user)
            return Response(
                MeExportStartedSerializer({"job": job.pk}).data,
                status=status.HTTP_202_ACCEPTED,
                headers={"Location": f"/api/v1/jobs/{job.pk}"},
            )
        job = user_export_job_get(user=request.user, job_id=job_id)
        if job.status == Job.Status.FAILED or job.status == Job.Status.CANCELLED:
            raise ConflictError(
                "This export failed; start a new one.",
                code="ERR_EXPORT_FAILED",
                details={"status": job.status},
            )
        if job.status != Job.Status.SUCCEEDED:
            raise ConflictError(
                "The export is not ready yet.",
                code="ERR_EXPORT_NOT_READY",
                details={"status": job.status, "percent": job.percent},
            )
        response = HttpResponse(export_archive(job), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="export-{job.pk}.zip"'
        return response


urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    path("me/permissions", MePermissionsView.as_view(), name="me-permissions"),
    path("me/active-org", MeActiveOrgView.as_view(), name="me-active-org"),
    path("me/export", MeExportView.as_view(), name="me-export"),
]
