"""Wiring between the four domain apps, which never import each other (ARCHITECTURE.md).

Listed last in INSTALLED_APPS, so its ``ready()`` runs once every app has registered its own
hooks; ``config`` is the only layer allowed to see both sides of each connection made here.
"""

from django.apps import AppConfig


class WiringConfig(AppConfig):
    """Connects chat's conversations to knowledge's episodic summaries."""

    name = "config"
    label = "platform_wiring"

    def ready(self) -> None:
        from chat.selectors.episodic_source import idle_conversations
        from knowledge.memory.registries import register_conversation_source

        register_conversation_source(idle_conversations)
