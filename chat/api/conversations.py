"""API of conversations (``/api/v1/conversations``): the caller's own threads with agents, their
message history with an opaque cursor, appending messages, branching and LLM titles.

Only the caller's conversations exist here: another user's (or another org's) answer 404. Through
an API key these endpoints need the ``conversations:read`` / ``conversations:write`` scopes.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts.api.base import TenantViewSet
from accounts.models import Role
from agents.api.agents import viewer_of
from chat.models import Conversation
from chat.selectors import conversations as selectors
from chat.selectors.messages import message_dict
from chat.services import conversations as services
from chat.services.turns import resolve_agent

from .serializers import (
    BranchInputSerializer,
    ConversationCreateInputSerializer,
    ConversationListFilterSerializer,
    ConversationOutputSerializer,
    ConversationUpdateInputSerializer,
    MessageAppendInputSerializer,
    MessageHistoryFilterSerializer,
    MessageHistoryOutputSerializer,
    MessageListOutputSerializer,
)

_TAGS = ["conversations"]


class ConversationViewSet(TenantViewSet):
    """``/api/v1/conversations`` and the per-conversation routes."""

    queryset = Conversation.objects.all()
    serializer_class = ConversationOutputSerializer
    read_role = Role.MEMBER
    write_role = Role.MEMBER
    scope_area = "conversations"

    def base_queryset(self):
        """The caller's own conversations only."""
        return selectors.conversation_list(org=self.request.org, user=self.request.user)

    def _conversation(self, id) -> Conversation:
        return selectors.conversation_get(org=self.request.org, user=self.request.user, conversation_id=id)

    @extend_schema(
        operation_id="conversations_list",
        tags=_TAGS,
        summary="Your conversations, most recently updated first.",
        parameters=[ConversationListFilterSerializer],
        responses=ConversationOutputSerializer(many=True),
    )
    def list(self, request):
        filters = ConversationListFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        data = filters.validated_data
        conversations = selectors.conversation_list(
            org=request.org,
            user=request.user,
            archived=data.get("archived"),
            agent_id=data.get("agent"),
            search=data.get("q") or None,
        )
        page = self.paginate_queryset(conversations)
        return self.get_paginated_response(ConversationOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="conversations_create",
        tags=_TAGS,
        summary="Open a conversation (with an agent you may see: 404 otherwise).",
        request=ConversationCreateInputSerializer,
        responses={201: ConversationOutputSerializer},
    )
    def create(self, request):
        body = ConversationCreateInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = None
        if body.validated_data.get("agent"):
            agent = resolve_agent(
                org=request.org,
                user=request.user,
                agent=body.validated_data["agent"],
                viewer=viewer_of(request),
            )
        conversation = services.conversation_create(
            org=request.org,
            user=request.user,
            agent=agent,
            title=body.validated_data.get("title", ""),
            channel=_channel(request),
        )
        return Response(ConversationOutputSerializer(conversation).data, status=status.HTTP_201_CREATED)

    @extend_schema(operation_id="conversations_retrieve", tags=_TAGS, responses=ConversationOutputSerializer)
    def retrieve(self, request, id):
        return Response(ConversationOutputSerializer(self._conversation(id)).data)

    @extend_schema(
        operation_id="conversations_partial_update",
        tags=_TAGS,
        summary="Rename, archive (`archived: true`) or unarchive a conversation.",
        request=ConversationUpdateInputSerializer,
        responses=ConversationOutputSerializer,
    )
    def partial_update(self, request, id):
        conversation = self._conversation(id)
        body = ConversationUpdateInputSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        conversation = services.conversation_update(
            conversation=conversation,
            actor=request.user,
            title=body.validated_data.get("title"),
            archived=body.validated_data.get("archived"),
        )
        return Response(ConversationOutputSerializer(conversation).data)

    @extend_schema(
        operation_id="conversations_destroy",
        tags=_TAGS,
        summary="Delete a conversation and its messages.",
        responses={204: OpenApiResponse(description="Deleted.")},
    )
    def destroy(self, request, id):
        services.conversation_delete(conversation=self._conversation(id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="conversations_messages_list",
        tags=_TAGS,
        summary="The history, oldest first, a page at a time.",
        description=(
            "`cursor` is the `next_cursor` of the previous page (null at the end). A cursor past the end "
            "of the history, or into a history that was reset, answers `reset: true` with the messages "
            "from the start. 400 `ERR_INVALID_CURSOR` for a cursor that is not one of ours."
        ),
        parameters=[MessageHistoryFilterSerializer],
        responses=MessageHistoryOutputSerializer,
    )
    def messages(self, request, id):
        conversation = self._conversation(id)
        filters = MessageHistoryFilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        page = selectors.message_history(
            conversation=conversation,
            cursor=filters.validated_data.get("cursor") or None,
            limit=filters.validated_data["limit"],
        )
        return Response(page)

    @extend_schema(
        operation_id="conversations_messages_create",
        tags=_TAGS,
        summary="Append messages (role user, assistant, system or tool; text or content parts).",
        request=MessageAppendInputSerializer,
        responses={201: MessageListOutputSerializer},
    )
    def append_messages(self, request, id):
        conversation = self._conversation(id)
        body = MessageAppendInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        rows = services.messages_append(
            conversation=conversation, actor=request.user, messages=body.validated_data["messages"]
        )
        return Response({"messages": [message_dict(m) for m in rows]}, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="conversations_branch",
        tags=_TAGS,
        summary="A new conversation with copies of messages [0, up_to_index); 400 out of range.",
        request=BranchInputSerializer,
        responses={201: ConversationOutputSerializer},
    )
    def branch(self, request, id):
        conversation = self._conversation(id)
        body = BranchInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        branch = services.conversation_branch(
            conversation=conversation,
            actor=request.user,
            up_to_index=body.validated_data["up_to_index"],
            label=body.validated_data.get("label", ""),
        )
        return Response(ConversationOutputSerializer(branch).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="conversations_title",
        tags=_TAGS,
        summary="Regenerate the title with the LLM.",
        description=(
            "Uses the conversation's agent's provider (purpose `title`). When the LLM fails the old title "
            "stays and its error is answered: 424 `ERR_NO_PROVIDER` / `ERR_PROVIDER_AUTH`, 502 "
            "`ERR_PROVIDER_UNAVAILABLE`; 400 `ERR_EMPTY_CONVERSATION` without messages."
        ),
        request=None,
        responses=ConversationOutputSerializer,
    )
    def title(self, request, id):
        conversation = services.conversation_title_generate(
            conversation=self._conversation(id), actor=request.user
        )
        return Response(ConversationOutputSerializer(conversation).data)


def _channel(request) -> str:
    from accounts.models import ApiKey

    return "api" if isinstance(request.auth, ApiKey) else "console"


_collection = ConversationViewSet.as_view({"get": "list", "post": "create"})
_detail = ConversationViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})
_messages = ConversationViewSet.as_view({"get": "messages", "post": "append_messages"})
