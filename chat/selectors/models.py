"""Reads of the OpenAI-compatible surface: the agents a caller may name as a ``model``.

An agent is addressed as ``agent:<key>``. Which agents a caller sees is the agents app's rule
(``agents.selectors.agents``): members see the org's shared agents and the private ones they own or
were shared, ADMINs every agent, an agent key only its own. Anything else, another org's agent
included, is a model that does not exist (404).
"""

from __future__ import annotations

from agents.models import Agent
from agents.selectors.agents import AgentViewer, aagent_for_run, agent_for_run, agent_list
from core.errors import NotFoundError

AGENT_PREFIX = "agent:"


class ModelNotFound(NotFoundError):
    """The ``model`` names no agent the caller may use."""

    code = "ERR_MODEL_NOT_FOUND"


def agent_model_id(agent: Agent) -> str:
    """The ``model`` id of an agent on this surface."""
    return f"{AGENT_PREFIX}{agent.key}"


def openai_model_list(*, org, viewer: AgentViewer) -> list[Agent]:
    """The agents ``viewer`` may call, ordered by key."""
    return list(agent_list(org=org, viewer=viewer).select_related(None).order_by("key"))


async def aopenai_agent_get(*, org, viewer: AgentViewer, model: str) -> Agent:
    """:func:`openai_agent_get` from the event loop (``agents.selectors.agents.aagent_for_run``)."""
    key = model.removeprefix(AGENT_PREFIX) if model.startswith(AGENT_PREFIX) else None
    agent = await aagent_for_run(org=org, viewer=viewer, key=key) if key else None
    if agent is None:
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.")
    return agent


def openai_agent_get(*, org, viewer: AgentViewer, model: str) -> Agent:
    """The agent named by ``agent:<key>``; 404 ``ERR_MODEL_NOT_FOUND`` for any other name."""
    key = model.removeprefix(AGENT_PREFIX) if model.startswith(AGENT_PREFIX) else None
    agent = agent_for_run(org=org, viewer=viewer, key=key) if key else None
    if agent is None:
        raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.")
    return agent
