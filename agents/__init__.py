"""Providers, the LLM choke point, agents, tools and the agent runtime."""
