"""App config of `knowledge.memory`."""

from django.apps import AppConfig


class MemoryConfig(AppConfig):
    """Agent memory documents, the knowledge graph and episodic summaries of conversations."""

    name = "knowledge.memory"
    label = "knowledge_memory"
    verbose_name = "Agent memory"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # memory_save / memory_search now read and write memory documents (replacing the
        # agents app's built-ins of the same names, which the registry allows).
        from . import tools  # noqa: F401
