"""Chat API routes: conversations, messages, the streaming turn, feedback."""

from django.urls import path

from . import conversations, turns

urlpatterns = [
    path("conversations", conversations._collection, name="conversations"),
    path("conversations/<uuid:id>", conversations._detail, name="conversation-detail"),
    path("conversations/<uuid:id>/messages", conversations._messages, name="conversation-messages"),
    path(
        "conversations/<uuid:id>/branch",
        conversations.ConversationViewSet.as_view({"post": "branch"}),
        name="conversation-branch",
    ),
    path(
        "conversations/<uuid:id>/title",
        conversations.ConversationViewSet.as_view({"post": "title"}),
        name="conversation-title",
    ),
    path("chat", turns.ChatTurnView.as_view(), name="chat-turn"),
    path("chat/<uuid:message_id>/stream", turns.TurnStreamView.as_view(), name="chat-turn-stream"),
    path("chat/<uuid:message_id>/cancel", turns.TurnCancelView.as_view(), name="chat-turn-cancel"),
    path("chat/<uuid:message_id>/feedback", turns.FeedbackView.as_view(), name="chat-feedback"),
]
