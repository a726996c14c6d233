"""App config of `agents`."""

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    """Providers, the LLM choke point, agents, tools and the agent runtime."""

    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts.registries import register_agent_resolver
        from agents import (
            lookup_cache,
            receivers,  # noqa: F401 - connects signal receivers
        )
        from agents.tools import builtins  # noqa: F401 - registers the built-in tools
        from core import aredis

        # Every key lookup on the loop reads the agents' cache generation too: a run's agent is
        # then checked against this process's copy without a round trip (``lookup_cache``).
        aredis.ride_with_key_reads(lookup_cache.GENERATION_KEY)

        def agent_exists(org, agent_id) -> bool:
            from agents.models import Agent

            return Agent.objects.filter(org=org, pk=agent_id).exists()

        register_agent_resolver(agent_exists)
