"""API of `accounts`: organisations, members, invites and groups.

``/orgs`` lists and creates the caller's orgs (a browser session only, not tenant-scoped); every
``/org/...`` route acts on the current org (``request.org``) through ``TenantViewSet``; the invite
token routes are how an invitee resolves and accepts an invitation.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, mixins, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.adapters import PENDING_INVITE_SESSION_KEY
from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import ApiKey, Group, GroupMembership, Invite, Membership, Role
from accounts.permissions import SessionOnly
from accounts.selectors.orgs import (
    InviteStatus,
    group_get,
    group_list,
    group_member_list,
    invite_by_token,
    invite_list,
    member_list,
    org_list_for_user,
)
from accounts.services.groups import (
    group_create,
    group_delete,
    group_member_add,
    group_member_remove,
    group_update,
)
from accounts.services.invites import invite_accept, invite_accept_url, invite_create, invite_revoke
from accounts.services.orgs import (
    member_remove,
    member_update_role,
    org_create,
    org_delete_request,
    org_update,
)
from core.errors import NotFoundError, PermissionDeniedError

from .orgs_serializers import (
    GroupCreateInputSerializer,
    GroupMemberAddInputSerializer,
    GroupMemberOutputSerializer,
    GroupOutputSerializer,
    GroupUpdateInputSerializer,
    InviteAcceptedOutputSerializer,
    InviteCreatedOutputSerializer,
    InviteCreateInputSerializer,
    InviteOutputSerializer,
    InvitePublicOutputSerializer,
    MemberOutputSerializer,
    MemberUpdateInputSerializer,
    MyOrgOutputSerializer,
    OrgCreateInputSerializer,
    OrgDeletionOutputSerializer,
    OrgOutputSerializer,
    OrgUpdateInputSerializer,
)

# OpenAPI security of the endpoints only a browser session may call.
SESSION_AUTH = [{"session": []}]


def acts_as_user(request) -> bool:
    """Whether the caller is the person ``request.user`` (a session or their personal key), not
    a service or agent key merely created by them."""
    key = request.auth if isinstance(request.auth, ApiKey) else None
    return key is None or key.kind == ApiKey.Kind.PERSONAL


# --- /orgs: the caller's orgs -------------------------------------------------------------------


class MyOrgsView(generics.GenericAPIView):
    """The caller's orgs across tenants; only a browser session may list or create them."""

    permission_classes = [IsAuthenticated, SessionOnly]
    serializer_class = MyOrgOutputSerializer
    queryset = Membership.objects.all()  # the model, for the schema; rows come from the selector

    def get_queryset(self):
        return org_list_for_user(user=self.request.user).select_related("user")

    @extend_schema(
        operation_id="orgs_list", tags=["orgs"], auth=SESSION_AUTH, responses=MyOrgOutputSerializer(many=True)
    )
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(MyOrgOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="orgs_create",
        tags=["orgs"],
        auth=SESSION_AUTH,
        request=OrgCreateInputSerializer,
        responses={201: MyOrgOutputSerializer},
        summary="Create an org; the caller becomes its OWNER.",
    )
    def post(self, request):
        data = OrgCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = org_create(name=data.validated_data["name"], owner=request.user, actor=request.user)
        membership = org_list_for_user(user=request.user).select_related("user").get(org=org)
        return Response(MyOrgOutputSerializer(membership).data, status=status.HTTP_201_CREATED)


# --- /org: the current org ----------------------------------------------------------------------


class CurrentOrgView(TenantAPIView):
    """The org the request acts in: read (VIEWER), rename (ADMIN), delete (OWNER)."""

    scope_area = "org"
    read_role = Role.VIEWER
    write_role = Role.ADMIN
    method_roles = {"DELETE": Role.OWNER}

    def _render(self, request, org):
        return OrgOutputSerializer(org, context={"role": request.role}).data

    @extend_schema(operation_id="org_retrieve", tags=["orgs"], responses=OrgOutputSerializer)
    def get(self, request):
        return Response(self._render(request, request.org))

    @extend_schema(
        operation_id="org_partial_update",
        tags=["orgs"],
        request=OrgUpdateInputSerializer,
        responses=OrgOutputSerializer,
    )
    def patch(self, request):
        data = OrgUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        org = org_update(org=request.org, actor=request.user, name=data.validated_data["name"])
        return Response(self._render(request, org))

    @extend_schema(
        operation_id="org_destroy",
        tags=["orgs"],
        request=None,
        responses={202: OrgDeletionOutputSerializer},
        summary="Delete the org: it stops answering at once; a job removes its data.",
    )
    def delete(self, request):
        job = org_delete_request(org=request.org, actor=request.user)
        return Response({"job": str(job.pk)}, status=status.HTTP_202_ACCEPTED)


# --- /org/members -------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(operation_id="org_members_list", tags=["members"]),
    retrieve=extend_schema(operation_id="org_members_retrieve", tags=["members"]),
    partial_update=extend_schema(
        operation_id="org_members_partial_update",
        tags=["members"],
        request=MemberUpdateInputSerializer,
        responses=MemberOutputSerializer,
        summary="Change a member's role (only an OWNER may touch OWNER; the last OWNER stays).",
    ),
    destroy=extend_schema(
        operation_id="org_members_destroy",
        tags=["members"],
        responses={204: None},
        summary="Remove a member (ADMIN), or leave (anyone, about themselves).",
    ),
)
class MemberViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantViewSet
):
    """The current org's members and their roles."""

    queryset = Membership.objects.all()
    serializer_class = MemberOutputSerializer
    scope_area = "members"
    read_role = Role.VIEWER
    write_role = Role.ADMIN
    # Anyone may leave; removing someone else is checked against ADMIN in destroy().
    action_roles = {"destroy": Role.VIEWER}
    lookup_field = "user_id"
    lookup_url_kwarg = "user_id"

    def base_queryset(self):
        return member_list(org=self.request.org)

    def partial_update(self, request, *args, **kwargs):
        membership = self.get_object()
        data = MemberUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        membership = member_update_role(
            org=request.org,
            actor=request.user,
            actor_role=request.role,
            user_id=membership.user_id,
            role=data.validated_data["role"],
        )
        return Response(MemberOutputSerializer(membership).data)

    def destroy(self, request, *args, **kwargs):
        membership = self.get_object()
        leaving = acts_as_user(request) and membership.user_id == request.user.pk
        if not leaving and Role.rank(request.role) < Role.rank(Role.ADMIN):
            raise PermissionDeniedError(
                f"Removing a member needs the {Role.ADMIN} role; you have {request.role}.",
                code="ERR_ROLE_REQUIRED",
                details={"required_role": Role.ADMIN, "role": request.role},
            )
        member_remove(
            org=request.org,
            actor=request.user,
            actor_role=request.role,
            user_id=membership.user_id,
            leaving=leaving,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- /org/invites -------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(
        operation_id="org_invites_list",
        tags=["invites"],
        parameters=[
            OpenApiParameter(
                "status", OpenApiTypes.STR, enum=list(InviteStatus.ALL), description="Only these."
            )
        ],
    ),
    create=extend_schema(
        operation_id="org_invites_create",
        tags=["invites"],
        request=InviteCreateInputSerializer,
        responses={201: InviteCreatedOutputSerializer},
        summary="Invite someone by email (valid 7 days); the answer alone shows the accept link.",
    ),
    destroy=extend_schema(
        operation_id="org_invites_destroy", tags=["invites"], responses={204: None}, summary="Revoke."
    ),
)
class InviteViewSet(mixins.ListModelMixin, TenantViewSet):
    """The current org's invites (ADMIN only: they reveal who is being invited)."""

    queryset = Invite.objects.all()
    serializer_class = InviteOutputSerializer
    scope_area = "invites"
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def base_queryset(self):
        wanted = self.request.query_params.get("status")
        return invite_list(org=self.request.org, status=wanted if wanted in InviteStatus.ALL else None)

    def create(self, request, *args, **kwargs):
        data = InviteCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        invite, token = invite_create(
            org=request.org,
            email=data.validated_data["email"],
            role=data.validated_data["role"],
            invited_by=request.user,
            actor_role=request.role,
        )
        invite.accept_url = invite_accept_url(token)
        return Response(InviteCreatedOutputSerializer(invite).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, **kwargs):
        invite_revoke(invite=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- /invites/{token}: the invitee's side -------------------------------------------------------


class InviteResolveView(APIView):
    """Public: what an invite token is for. Leaves the token in the session for a signup."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="invites_resolve",
        tags=["invites"],
        auth=[],
        responses={200: InvitePublicOutputSerializer, 404: OpenApiResponse(description="Unknown token.")},
    )
    def get(self, request, token: str):
        invite = invite_by_token(token=token)
        if invite is None:
            raise NotFoundError("Invite not found.", code="ERR_INVITE_NOT_FOUND")
        request.session[PENDING_INVITE_SESSION_KEY] = token
        return Response(InvitePublicOutputSerializer(invite).data)


class InviteAcceptView(APIView):
    """Accept an invite as the signed-in user (browser session only)."""

    permission_classes = [IsAuthenticated, SessionOnly]

    @extend_schema(
        operation_id="invites_accept",
        tags=["invites"],
        auth=SESSION_AUTH,
        request=None,
        responses={200: InviteAcceptedOutputSerializer},
        summary="Join the invite's org with its role (single use; the email must match).",
    )
    def post(self, request, token: str):
        membership = invite_accept(token=token, user=request.user)
        if request.session.get(PENDING_INVITE_SESSION_KEY) == token:
            del request.session[PENDING_INVITE_SESSION_KEY]
        body = {"org": None, "role": None}
        if membership is not None:
            body = {"org": {"id": membership.org.pk, "name": membership.org.name}, "role": membership.role}
        return Response(InviteAcceptedOutputSerializer(body).data)


# --- /org/groups --------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(operation_id="org_groups_list", tags=["groups"]),
    create=extend_schema(
        operation_id="org_groups_create",
        tags=["groups"],
        request=GroupCreateInputSerializer,
        responses={201: GroupOutputSerializer},
    ),
    retrieve=extend_schema(operation_id="org_groups_retrieve", tags=["groups"]),
    partial_update=extend_schema(
        operation_id="org_groups_partial_update",
        tags=["groups"],
        request=GroupUpdateInputSerializer,
        responses=GroupOutputSerializer,
    ),
    destroy=extend_schema(operation_id="org_groups_destroy", tags=["groups"], responses={204: None}),
)
class GroupViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantViewSet):
    """The current org's groups: VIEWER reads, ADMIN writes."""

    queryset = Group.objects.all()
    serializer_class = GroupOutputSerializer
    scope_area = "groups"
    read_role = Role.VIEWER
    write_role = Role.ADMIN

    def base_queryset(self):
        return group_list(org=self.request.org)

    def _render(self, group_id):
        return GroupOutputSerializer(group_get(org=self.request.org, group_id=group_id)).data

    def create(self, request, *args, **kwargs):
        data = GroupCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        group = group_create(org=request.org, actor=request.user, **data.validated_data)
        return Response(self._render(group.pk), status=status.HTTP_201_CREATED)

    def partial_update(self, request, *args, **kwargs):
        group = self.get_object()
        data = GroupUpdateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        group_update(group=group, actor=request.user, **data.validated_data)
        return Response(self._render(group.pk))

    def destroy(self, request, *args, **kwargs):
        group_delete(group=self.get_object(), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    list=extend_schema(
        operation_id="org_groups_members_list",
        tags=["groups"],
        parameters=[
            OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Group id.")
        ],
    ),
    create=extend_schema(
        operation_id="org_groups_members_create",
        tags=["groups"],
        parameters=[
            OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Group id.")
        ],
        request=GroupMemberAddInputSerializer,
        responses={201: GroupMemberOutputSerializer},
        summary="Add a member of the org to the group.",
    ),
    destroy=extend_schema(
        operation_id="org_groups_members_destroy",
        tags=["groups"],
        parameters=[
            OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="Group id."),
            OpenApiParameter("user_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="User id."),
        ],
        responses={204: None},
    ),
)
class GroupMemberViewSet(mixins.ListModelMixin, TenantViewSet):
    """Who is in one of the current org's groups."""

    queryset = GroupMembership.objects.all()
    serializer_class = GroupMemberOutputSerializer
    tenant_field = "group__org"
    scope_area = "groups"
    read_role = Role.VIEWER
    write_role = Role.ADMIN
    lookup_field = "user_id"
    lookup_url_kwarg = "user_id"

    def group(self) -> Group:
        """The group named in the URL; 404 unless it belongs to the current org."""
        if not hasattr(self, "_group"):
            self._group = group_get(org=self.request.org, group_id=self.kwargs["id"])
        return self._group

    def base_queryset(self):
        return group_member_list(org=self.request.org, group=self.group())

    def create(self, request, *args, **kwargs):
        group = self.group()
        data = GroupMemberAddInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        entry = group_member_add(group=group, actor=request.user, user_id=data.validated_data["user_id"])
        return Response(GroupMemberOutputSerializer(entry).data, status=status.HTTP_201_CREATED)

    def destroy(self, request, *args, user_id=None, **kwargs):
        group_member_remove(group=self.group(), actor=request.user, user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


member_list_view = MemberViewSet.as_view({"get": "list"})
member_detail_view = MemberViewSet.as_view(
    {"get": "retrieve", "patch": "partial_update", "delete": "destroy"}
)
group_list_view = GroupViewSet.as_view({"get": "list", "post": "create"})
group_detail_view = GroupViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})
group_member_list_view = GroupMemberViewSet.as_view({"get": "list", "post": "create"})
group_member_detail_view = GroupMemberViewSet.as_view({"delete": "destroy"})

urlpatterns = [
    path("orgs", MyOrgsView.as_view(), name="orgs"),
    path("org", CurrentOrgView.as_view(), name="org"),
    path("org/members", member_list_view, name="org-members"),
    path("org/members/<uuid:user_id>", member_detail_view, name="org-member"),
    path("org/invites", InviteViewSet.as_view({"get": "list", "post": "create"}), name="org-invites"),
    path("org/invites/<uuid:id>", InviteViewSet.as_view({"delete": "destroy"}), name="org-invite"),
    path("invites/<str:token>", InviteResolveView.as_view(), name="invite-resolve"),
    path("invites/<str:token>/accept", InviteAcceptView.as_view(), name="invite-accept"),
    path("org/groups", group_list_view, name="org-groups"),
    path("org/groups/<uuid:id>", group_detail_view, name="org-group"),
    path("org/groups/<uuid:id>/members", group_member_list_view, name="org-group-members"),
    path("org/groups/<uuid:id>/members/<uuid:user_id>", group_member_detail_view, name="org-group-member"),
]
