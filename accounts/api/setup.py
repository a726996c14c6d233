"""API of `accounts`: first-run setup, the signup policy (staff) and the waitlist."""

from __future__ import annotations

from django.contrib.auth import login
from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import WaitlistEntry
from accounts.permissions import IsStaff, SessionOnly
from accounts.services import setup as setup_services
from accounts.services import signup as signup_services

from .setup_serializers import (
    SetupInputSerializer,
    SetupOutputSerializer,
    SetupStatusOutputSerializer,
    SignupSettingsSerializer,
    WaitlistEntryOutputSerializer,
    WaitlistFilterSerializer,
    WaitlistJoinInputSerializer,
    WaitlistJoinOutputSerializer,
)

# The backend a fresh session is bound to: allauth's, so its headless API sees the same login.
SESSION_BACKEND = "allauth.account.auth_backends.AuthenticationBackend"

STAFF_PERMISSIONS = [IsAuthenticated, SessionOnly, IsStaff]


class PublicAPIView(APIView):
    """No credentials read (hence no CSRF check): these are called before anyone can sign in."""

    authentication_classes: list = []
    permission_classes = [AllowAny]


class SetupStatusView(PublicAPIView):
    """The first screen asks whether to show setup, signup or login, and which login buttons."""

    @extend_schema(
        operation_id="auth_setup_status",
        tags=["auth"],
        responses=SetupStatusOutputSerializer,
        summary="Whether the platform is set up, its signup mode and its login methods.",
    )
    def get(self, request):
        return Response(SetupStatusOutputSerializer(setup_services.platform_setup_status()).data)


class SetupView(PublicAPIView):
    """The one-shot first owner and org; the caller leaves signed in (session cookie)."""

    @extend_schema(
        operation_id="auth_setup",
        tags=["auth"],
        request=SetupInputSerializer,
        responses={
            201: SetupOutputSerializer,
            400: OpenApiResponse(description="Invalid input or a password the validators refuse."),
            409: OpenApiResponse(description="ERR_ALREADY_SET_UP: the platform is already set up."),
        },
        summary="One-shot: create the first owner and org, and sign the caller in.",
    )
    def post(self, request):
        data = SetupInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        user, org = setup_services.platform_setup(**data.validated_data)
        login(request._request, user, backend=SESSION_BACKEND)
        body = {"user": {"id": user.pk, "email": user.email}, "org": {"id": org.pk, "name": org.name}}
        return Response(SetupOutputSerializer(body).data, status=status.HTTP_201_CREATED)


class SignupSettingsView(APIView):
    """Staff read and change the signup mode."""

    permission_classes = STAFF_PERMISSIONS

    @extend_schema(
        operation_id="admin_signup_settings_retrieve",
        tags=["admin"],
        responses=SignupSettingsSerializer,
        summary="How people may sign up (staff).",
    )
    def get(self, request):
        row = signup_services.platform_settings_get()
        return Response(SignupSettingsSerializer({"signup_mode": row.signup_mode}).data)

    @extend_schema(
        operation_id="admin_signup_settings_update",
        tags=["admin"],
        request=SignupSettingsSerializer,
        responses=SignupSettingsSerializer,
        summary="Change how people may sign up (staff).",
    )
    def put(self, request):
        data = SignupSettingsSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row = signup_services.signup_settings_update(
            actor=request.user, signup_mode=data.validated_data["signup_mode"]
        )
        return Response(SignupSettingsSerializer({"signup_mode": row.signup_mode}).data)


class WaitlistJoinView(PublicAPIView):
    """Anyone may ask to join while signup is by waitlist; asking twice returns the first entry."""

    @extend_schema(
        operation_id="auth_waitlist_join",
        tags=["auth"],
        request=WaitlistJoinInputSerializer,
        responses={
            201: WaitlistJoinOutputSerializer,
            200: OpenApiResponse(WaitlistJoinOutputSerializer, description="Already on the waitlist."),
            409: OpenApiResponse(description="ERR_WAITLIST_CLOSED: signup is not by waitlist."),
        },
        summary="Ask to join while signup is by waitlist.",
    )
    def post(self, request):
        data = WaitlistJoinInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        entry, created = signup_services.waitlist_join(**data.validated_data)
        return Response(
            WaitlistJoinOutputSerializer(entry).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


@extend_schema_view(
    get=extend_schema(
        operation_id="admin_waitlist_list",
        tags=["admin"],
        parameters=[
            OpenApiParameter("status", str, enum=list(WaitlistEntry.Status.values), required=False),
        ],
        summary="Waitlist entries, oldest first (staff).",
    )
)
class WaitlistListView(generics.ListAPIView):
    """Staff review the waitlist, optionally one status at a time."""

    permission_classes = STAFF_PERMISSIONS
    serializer_class = WaitlistEntryOutputSerializer

    def get_queryset(self):
        filters = WaitlistFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return signup_services.waitlist_list(status=filters.validated_data.get("status"))


class WaitlistDecisionView(APIView):
    """Approve or reject one entry; ``decision`` is set per route."""

    permission_classes = STAFF_PERMISSIONS
    decision = "approve"

    def post(self, request, id):
        decide = (
            signup_services.waitlist_approve
            if self.decision == "approve"
            else signup_services.waitlist_reject
        )
        entry = decide(entry_id=id, actor=request.user)
        return Response(WaitlistEntryOutputSerializer(entry).data)


_decision_responses = {
    200: WaitlistEntryOutputSerializer,
    404: OpenApiResponse(description="No such entry."),
    409: OpenApiResponse(description="ERR_ALREADY_DECIDED: the entry was approved or rejected before."),
}


class WaitlistApproveView(WaitlistDecisionView):
    """Approve: the person receives a signup invitation by email."""

    decision = "approve"

    @extend_schema(
        operation_id="admin_waitlist_approve",
        tags=["admin"],
        request=None,
        responses=_decision_responses,
        summary="Approve an entry: a signup invitation is emailed (staff).",
    )
    def post(self, request, id):
        return super().post(request, id)


class WaitlistRejectView(WaitlistDecisionView):
    """Reject: nothing is sent."""

    decision = "reject"

    @extend_schema(
        operation_id="admin_waitlist_reject",
        tags=["admin"],
        request=None,
        responses=_decision_responses,
        summary="Reject an entry (staff).",
    )
    def post(self, request, id):
        return super().post(request, id)


urlpatterns = [
    path("auth/setup-status", SetupStatusView.as_view(), name="auth-setup-status"),
    path("auth/setup", SetupView.as_view(), name="auth-setup"),
    path("auth/waitlist", WaitlistJoinView.as_view(), name="auth-waitlist"),
    path("admin/signup-settings", SignupSettingsView.as_view(), name="admin-signup-settings"),
    path("admin/waitlist", WaitlistListView.as_view(), name="admin-waitlist"),
    path("admin/waitlist/<uuid:id>/approve", WaitlistApproveView.as_view(), name="admin-waitlist-approve"),
    path("admin/waitlist/<uuid:id>/reject", WaitlistRejectView.as_view(), name="admin-waitlist-reject"),
]
