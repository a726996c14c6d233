"""App config of `chat`."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Conversations, the streaming turn, the OpenAI-compatible API and WebSocket RPC."""

    name = "chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Runs that name a conversation (a wake with conversation_id, the OpenAI surface) see it so far.
        from agents.runtime.loop import register_history_loader
        from chat.selectors.conversations import history_loader

        register_history_loader(history_loader)
        # The WebSocket RPC methods (chat.send, sessions.*, …) in the core registry, in every
        # process, not only in those that load the WebSocket routing.
        from chat.ws import methods  # noqa: F401
