"""App config of `knowledge`."""

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    """Knowledge bases, ingestion, embeddings, retrieval and agent memory."""

    name = "knowledge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from knowledge import (
            tasks,  # noqa: F401 - registers the job handlers
            tools,  # noqa: F401 - registers the knowledge_search tool
        )
