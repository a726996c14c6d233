"""The ``knowledge_search`` tool: registered in the agents registry, searches only the agent's
attached KBs of its org, and returns passages with citations."""

from __future__ import annotations

import uuid

from asgiref.sync import async_to_sync

from agents.models import Agent
from agents.tools.registry import ToolContext, aexecute, get_tool, tools_for_agent
from knowledge.services.bases import kb_create
from knowledge.services.documents import document_create_from_text

from .conftest import run_pending_jobs


def make_agent(org, kbs, tools=("knowledge_search",)) -> Agent:
    return Agent.objects.create(
        org=org, key=f"a-{uuid.uuid4().hex[:8]}", name="Librarian", model="m", tools=list(tools),
        knowledge_bases=[str(kb.pk) for kb in kbs],
    )  # fmt: skip


def call(org, agent, args):
    return async_to_sync(aexecute)(get_tool("knowledge_search"), ToolContext(org=org, agent=agent), args)


def test_the_tool_is_registered_and_offered_to_agents_that_list_it(org, kb):
    tool = get_tool("knowledge_search")
    assert tool is not None and tool.parameters["required"] == ["query"]
    assert [t.name for t in tools_for_agent(make_agent(org, [kb]))] == ["knowledge_search"]


def test_results_carry_passages_and_citations(org, owner, kb):
    document = document_create_from_text(kb=kb, actor=owner, title="Otters", text="Sea otters hold hands.")
    document_create_from_text(kb=kb, actor=owner, title="Bread", text="Sourdough rises slowly.")
    run_pending_jobs()
    outcome = call(org, make_agent(org, [kb]), {"query": "why do otters hold hands", "top_k": 3})
    result = outcome["result"]
    assert result["passages"][0]["title"] == "Otters"
    assert result["passages"][0]["n"] == 1
    first = result["citations"][0]
    assert set(first) == {"document_id", "chunk_id", "score"}
    assert first["document_id"] == str(document.pk)
    assert len(result["citations"]) == len(result["passages"])


def test_only_attached_kbs_of_the_agents_org_are_searched(org, owner, kb, other_org, outsider):
    foreign = kb_create(org=other_org, actor=outsider, name="Theirs")
    document_create_from_text(kb=foreign, actor=outsider, title="Secret", text="The otters plan is secret.")
    unattached = kb_create(org=org, actor=owner, name="Unattached")
    document_create_from_text(kb=unattached, actor=owner, title="Hidden", text="Otters elsewhere.")
    document_create_from_text(kb=kb, actor=owner, title="Mine", text="Otters are ours.")
    run_pending_jobs()
    agent = make_agent(org, [kb, foreign])  # a foreign id in the list is ignored
    titles = [p["title"] for p in call(org, agent, {"query": "otters"})["result"]["passages"]]
    assert titles == ["Mine"]


def test_an_agent_without_kbs_gets_a_clear_tool_error(org):
    outcome = call(org, make_agent(org, []), {"query": "otters"})
    assert outcome["code"] == "ERR_TOOL_FAILED" and "no knowledge bases" in outcome["error"]


def test_bad_arguments_are_reported_not_raised(org, kb):
    outcome = call(org, make_agent(org, [kb]), {"q": "otters"})
    assert outcome["code"] == "ERR_TOOL_ARGUMENTS"
