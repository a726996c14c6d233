"""App config of `knowledge`."""

from django.apps import AppConfig


class KnowledgeConfig(AppConfig):
    """Knowledge bases, ingestion, embeddings, retrieval and agent memory."""

    name = "knowledge"
    default_auto_field = "django.db.models.BigAutoField"
