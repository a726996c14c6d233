"""App config of `chat`."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Conversations, the streaming turn, the OpenAI-compatible API and WebSocket RPC."""

    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"
