"""App config of `agents`."""

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    """Providers, the LLM choke point, agents, tools and the agent runtime."""

    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.registries import register_agent_resolver
        from agents import receivers  # noqa: F401 - connects signal receivers
        from agents.tools import builtins  # noqa: F401 - registers the built-in tools

        def agent_exists(org, agent_id) -> bool:
            from agents.models import Agent

            return Agent.objects.filter(org=org, pk=agent_id).exists()

        register_agent_resolver(agent_exists)
