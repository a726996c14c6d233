"""App config of `agents`."""

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    """Providers, the LLM choke point, agents, tools and the agent runtime."""

    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"
