"""The agent runtime (agents.runtime.loop): the LLM ↔ tool loop against the fake upstream.

The fake's ``tools-N`` model asks for the first tool of the request N times (``tools-N-pM``: M calls
at once per step), then answers "done after <results> tools".
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from agents.models import Agent, AgentRun, Provider
from agents.runtime.loop import FINISH_MAX_TOOL_ITERATIONS, FINISH_STOP, register_history_loader, run_agent
from agents.tools.registry import Tool, ToolError, register_tool, unregister_tool
from core.errors import ApplicationError
from tests.polling import await_for, wait_for

STEP_SCHEMA = {
    "type": "object",
    "properties": {"step": {"type": "integer", "minimum": 1}},
    "required": ["step"],
    "additionalProperties": False,
}


@pytest.fixture
def provider(org, fake_upstream, allow_loopback):
    return Provider.objects.create(
        org=org,
        name="fake",
        provider_type="openai_compat",
        api_base=fake_upstream.base_url,
        api_key=f"sk-test-{uuid.uuid4().hex}",
    )


@pytest.fixture
def counter_tool():
    """A registered tool that counts its calls (and what it was called with)."""
    calls: list[dict] = []

    def handler(ctx, args):
        calls.append({"args": args, "agent": ctx.agent.pk, "run": ctx.run_id})
        return {"count": len(calls), "echo": args["step"]}

    register_tool(
        Tool(
            name="test_counter",
            description="Counts.",
            parameters=STEP_SCHEMA,
            handler=handler,
            touches_db=False,
        )
    )
    yield calls
    unregister_tool("test_counter")


def make_agent(org, provider, model, tools=(), **fields) -> Agent:
    return Agent.objects.create(
        org=org,
        key=f"agent-{uuid.uuid4().hex[:8]}",
        name="Runner",
        provider=provider,
        model=model,
        tools=list(tools),
        **fields,
    )


def test_a_three_step_tool_loop_runs_each_call_and_feeds_results_back(org, member, provider, counter_tool):
    agent = make_agent(
        org, provider, "tools-3", tools=["test_counter"], system_prompt="You are {{ agent_name }}."
    )
    run = run_agent(agent=agent, message="count please", user=member)

    assert [c["args"] for c in counter_tool] == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert all(c["run"] == run.pk and c["agent"] == agent.pk for c in counter_tool)
    run.refresh_from_db()
    assert run.status == AgentRun.Status.SUCCEEDED
    assert run.finish_reason == FINISH_STOP
    assert run.output == "done after 3 tools"
    assert run.tool_calls == 3
    assert run.input == "count please"
    assert run.user == member
    assert run.trigger == "wake"
    assert run.finished_at is not None
    assert run.provider_id == provider.pk
    assert run.provider_source == "agent"
    assert run.model == "tools-3"

    kinds = [step["type"] for step in run.steps]
    assert kinds == ["llm", "tool", "llm", "tool", "llm", "tool", "llm"]
    llm_steps = [s for s in run.steps if s["type"] == "llm"]
    assert all(s["prompt_tokens"] > 0 and s["latency_ms"] >= 0 and s["model"] for s in llm_steps)
    assert run.prompt_tokens == sum(s["prompt_tokens"] for s in llm_steps)
    assert run.completion_tokens == sum(s["completion_tokens"] for s in llm_steps)
    tool_steps = [s for s in run.steps if s["type"] == "tool"]
    assert tool_steps[0]["name"] == "test_counter"
    assert tool_steps[0]["arguments"] == {"step": 1}
    assert tool_steps[2]["result"] == {"count": 3, "echo": 3}
    assert all("duration_ms" in s and "error" not in s for s in tool_steps)


def test_the_iteration_cap_stops_the_loop_with_a_clear_finish_reason(org, member, provider, counter_tool):
    agent = make_agent(org, provider, "tools-5", tools=["test_counter"], max_tool_iterations=2)
    run = run_agent(agent=agent, message="go", user=member)

    assert len(counter_tool) == 2
    assert run.status == AgentRun.Status.SUCCEEDED
    assert run.finish_reason == FINISH_MAX_TOOL_ITERATIONS
    assert "max_tool_iterations" in run.output
    assert run.tool_calls == 2
    assert [s["type"] for s in run.steps].count("llm") == 3


def test_several_tool_calls_of_one_answer_run_concurrently(org, member, provider):
    # Each call waits at a barrier of 3: run one after another, the first would never get through.
    barrier_box: dict = {}
    calls: list[int] = []

    async def handler(ctx, args):
        barrier = barrier_box.setdefault("b", asyncio.Barrier(3))
        async with asyncio.timeout(5):
            await barrier.wait()
        calls.append(args["step"])
        return {"ok": True}

    register_tool(Tool(name="test_barrier", description="", parameters=STEP_SCHEMA, handler=handler))
    try:
        agent = make_agent(org, provider, "tools-2-p3", tools=["test_barrier"])
        run = run_agent(agent=agent, message="fan out", user=member)
    finally:
        unregister_tool("test_barrier")

    assert calls == [1, 1, 1, 2, 2, 2]
    assert run.output == "done after 6 tools"
    assert run.tool_calls == 6
    tool_steps = [s for s in run.steps if s["type"] == "tool"]
    assert all("error" not in s for s in tool_steps), tool_steps
    assert [s["id"] for s in tool_steps[:3]] == ["call_1_1", "call_1_2", "call_1_3"]


def test_a_tool_error_is_fed_back_to_the_model_not_raised(org, member, provider):
    def handler(ctx, args):
        raise ToolError("the printer is on fire")

    register_tool(Tool(name="test_failing", description="", parameters=STEP_SCHEMA, handler=handler))
    try:
        agent = make_agent(org, provider, "tools-2", tools=["test_failing"])
        run = run_agent(agent=agent, message="try", user=member)
    finally:
        unregister_tool("test_failing")

    assert run.status == AgentRun.Status.SUCCEEDED
    assert run.output == "done after 2 tools"
    errors = [s["error"] for s in run.steps if s["type"] == "tool"]
    assert errors == ["the printer is on fire", "the printer is on fire"]


def test_bad_arguments_from_the_model_are_a_tool_error(org, member, provider):
    # memory_save wants {content}; the fake sends {"step": 1}.
    agent = make_agent(org, provider, "tools-1", tools=["memory_save"])
    run = run_agent(agent=agent, message="remember", user=member)
    assert run.status == AgentRun.Status.SUCCEEDED
    (step,) = [s for s in run.steps if s["type"] == "tool"]
    assert step["error"].startswith("Invalid arguments:")
    assert "content: is required." in step["error"]


def test_a_disabled_tool_is_not_offered_to_the_model(org, member, provider, counter_tool):
    from agents.models import BuiltinToolConfig

    BuiltinToolConfig.objects.create(org=org, name="test_counter", enabled=False)
    agent = make_agent(org, provider, "tools-3", tools=["test_counter"])
    run = run_agent(agent=agent, message="hello", user=member)
    # Offered no tools, the fake cannot ask for one and answers at once.
    assert run.output == "done after 0 tools"
    assert counter_tool == []
    assert run.tool_calls == 0


def test_an_llm_error_fails_the_run_and_reraises(org, member, provider):
    agent = make_agent(org, provider, "fail-401")
    with pytest.raises(ApplicationError) as raised:
        run_agent(agent=agent, message="hi", user=member)
    assert raised.value.code == "ERR_PROVIDER_AUTH"
    run = AgentRun.objects.get(agent=agent)
    assert run.status == AgentRun.Status.FAILED
    assert run.error["code"] == "ERR_PROVIDER_AUTH"
    assert run.error["message"]
    assert run.finished_at is not None


def test_events_report_the_progress_of_a_run(org, member, provider, counter_tool):
    events: list[dict] = []

    async def on_event(event):
        events.append(event)

    agent = make_agent(org, provider, "tools-1", tools=["test_counter"])
    run = run_agent(agent=agent, message="x", user=member, on_event=on_event)
    assert [e["type"] for e in events] == ["llm", "tool_call", "tool_result", "llm"]
    assert all(e["run_id"] == str(run.pk) for e in events)
    assert events[1]["call"]["name"] == "test_counter"


def test_history_from_a_registered_loader_comes_before_the_message(org, member, provider):
    from agents.runtime import loop

    seen: dict = {}

    def loader(*, org, agent, user, conversation_id):
        seen["conversation_id"] = conversation_id
        return [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "noted"}]

    previous = loop._history_loader
    register_history_loader(loader)
    try:
        agent = make_agent(org, provider, "fake-model-1")
        conversation = uuid.uuid4()
        run = run_agent(agent=agent, message="now", user=member, conversation_id=conversation, trigger="chat")
    finally:
        loop._history_loader = previous
    assert seen["conversation_id"] == conversation
    assert run.output == "echo: now"
    assert run.conversation_id == conversation
    assert run.trigger == "chat"


def test_a_cancelled_run_is_recorded_as_cancelled(org, member, provider):
    from asgiref.sync import async_to_sync

    from agents.runtime.loop import arun_agent

    started: dict = {}

    async def handler(ctx, args):
        started["event"].set()
        await asyncio.Event().wait()  # never returns: the run is cancelled while it waits

    register_tool(Tool(name="test_forever", description="", parameters=STEP_SCHEMA, handler=handler))
    agent = make_agent(org, provider, "tools-1", tools=["test_forever"])

    async def scenario():
        started["event"] = asyncio.Event()
        task = asyncio.create_task(arun_agent(agent=agent, message="wait", user=member))
        async with asyncio.timeout(10):
            await started["event"].wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        async_to_sync(scenario)()
    finally:
        unregister_tool("test_forever")
    run = AgentRun.objects.get(agent=agent)
    assert run.status == AgentRun.Status.CANCELLED
    assert run.finish_reason == "cancelled"
    assert run.finished_at is not None


def test_the_events_of_a_run_end_with_the_finished_run(org, member, provider):
    from asgiref.sync import async_to_sync

    from agents.runtime.loop import agent_events

    agent = make_agent(org, provider, "fake-model-1")

    async def scenario():
        return [event async for event in agent_events(agent=agent, message="a b", user=member, stream=True)]

    events = async_to_sync(scenario)()
    *deltas, llm, end = events
    assert "".join(event["text"] for event in deltas) == "echo: a b"
    assert {event["type"] for event in deltas} == {"delta"} and llm["type"] == "llm"
    assert end["type"] == "end" and end["run"].status == AgentRun.Status.SUCCEEDED
    assert end["run"].output == "echo: a b"
    assert all(event["run_id"] == str(end["run"].pk) for event in [*deltas, llm])
    assert AgentRun.objects.get(pk=end["run"].pk).output == "echo: a b"


def test_closing_a_streamed_runs_events_early_closes_its_call_and_cancels_it(
    org, member, provider, fake_upstream
):
    """A reader that stops (its client went away) closes the generator at the delta it holds: the
    upstream call is closed at once and the run is recorded as cancelled, not left running."""
    from asgiref.sync import async_to_sync

    from agents.runtime.loop import agent_events

    agent = make_agent(org, provider, "hang-midway")  # two deltas, then nothing for 30 s

    async def scenario():
        events = agent_events(agent=agent, message="one two three", user=member, stream=True)
        texts = []
        async for event in events:
            texts.append(event["text"])
            if len(texts) == 2:
                break
        await events.aclose()
        return texts

    texts = async_to_sync(scenario)()
    assert "".join(texts) == "echo: one"
    run = AgentRun.objects.get(agent=agent)
    assert run.status == AgentRun.Status.CANCELLED and run.finish_reason == "cancelled"
    assert wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1, timeout=5)


def test_a_run_built_by_its_caller_does_not_need_the_agents_org_loaded(org, member, provider):
    """A chat turn that opens a conversation builds the run's row itself (with the org) and may
    pass an agent whose org is not loaded: the run must not read it from the loop."""
    from asgiref.sync import async_to_sync

    from agents.runtime.loop import arun_agent
    from agents.services.runs import arun_save, run_build

    agent = Agent.objects.get(pk=make_agent(org, provider, "fake-model-1").pk)
    assert not Agent.org.is_cached(agent)
    run = run_build(org=org, agent=agent, user=member, message="hi", trigger="chat")

    async def scenario():
        return await arun_agent(
            agent=agent, message="hi", user=member, stream=True, run=run, run_written=arun_save(run)
        )

    finished = async_to_sync(scenario)()
    assert finished.status == AgentRun.Status.SUCCEEDED and finished.output == "echo: hi"


def test_an_event_callback_that_fails_fails_the_run_with_its_error(org, member, provider):
    async def on_event(event):
        raise RuntimeError("the reader broke")

    agent = make_agent(org, provider, "fake-model-1")
    with pytest.raises(RuntimeError, match="the reader broke"):
        run_agent(agent=agent, message="hi", user=member, stream=True, on_event=on_event)
    run = AgentRun.objects.get(agent=agent)
    assert run.status == AgentRun.Status.FAILED
    assert run.error == {"code": "ERR_INTERNAL", "message": "The run failed: RuntimeError."}


@pytest.mark.django_db(transaction=True)
def test_a_streamed_runs_row_is_written_once_its_request_left_and_its_first_delta_is_out(
    fake_upstream, allow_loopback, monkeypatch
):
    """Compiling and sending the row's statement takes the loop for a while: a streamed run called
    under ``request_sent_signal`` (as the /v1 views call it) writes it after its request has left
    and its first delta was handed to ``on_event``, not in between."""
    from agents.llm import request_sent_signal
    from agents.llm import sent as llm_sent
    from agents.runtime import loop
    from agents.services import runs
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    provider = Provider.objects.create(
        org=org, name="fake", provider_type="openai_compat", api_base=fake_upstream.base_url, api_key="sk-x"
    )
    agent = make_agent(org, provider, "slow")
    monkeypatch.setattr(llm_sent, "FIRST_EVENT_HOLD_SECONDS", 30.0)  # the first delta, however late
    monkeypatch.setattr(llm_sent, "REQUEST_SENT_WAIT_SECONDS", 30.0)  # and the request, however slow
    writer = runs._loop_run_saves
    real_write = writer.write
    deltas: list[str] = []
    seen: dict = {}

    async def on_event(event):
        if event["type"] == "delta":
            deltas.append(event["text"])

    async def recorded_write(item):
        seen.setdefault("sent", sent.done())
        seen.setdefault("deltas", list(deltas))
        await real_write(item)

    async def main():
        nonlocal sent
        with request_sent_signal() as sent:
            return await loop.arun_agent(
                agent=agent, message="a b", trigger="openai", stream=True, on_event=on_event
            )

    sent = None
    monkeypatch.setattr(writer, "write", recorded_write)
    run = asyncio.run(main())
    assert seen == {"sent": True, "deltas": ["echo:"]}
    assert (
        AgentRun.objects.get(pk=run.pk).status == AgentRun.Status.SUCCEEDED and "".join(deltas) == "echo: a b"
    )


@pytest.mark.django_db(transaction=True)
def test_the_model_call_does_not_wait_for_the_run_row(fake_upstream, allow_loopback, monkeypatch):
    """On a server's loop the run's row is written while its first model call is on its way; a run
    whose row cannot be written fails with that error and leaves no row."""
    from agents.runtime import loop
    from agents.services import runs
    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    provider = Provider.objects.create(
        org=org, name="fake", provider_type="openai_compat", api_base=fake_upstream.base_url, api_key="sk-x"
    )
    agent = make_agent(org, provider, "fake-model-1")
    writer = runs._loop_run_saves  # from the loop on PostgreSQL, else through its fallback thread
    real_write = writer.write
    seen: dict = {"requests": fake_upstream.stats["requests"]}

    async def write_after_the_call(item):
        await await_for(lambda: fake_upstream.stats["requests"] != seen["requests"], timeout=5)
        seen["call_was_out"] = fake_upstream.stats["requests"] > seen["requests"]
        await real_write(item)

    monkeypatch.setattr(writer, "write", write_after_the_call)
    run = asyncio.run(loop.arun_agent(agent=agent, message="hi", trigger="openai"))  # a server's loop
    assert seen["call_was_out"] is True
    run = AgentRun.objects.get(pk=run.pk)
    assert (run.status, run.output) == (AgentRun.Status.SUCCEEDED, "echo: hi")

    def broken_groups(items):
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(writer, "write", real_write)
    monkeypatch.setattr(writer, "_groups_of", broken_groups)
    monkeypatch.setattr(runs, "runs_write", broken_groups)  # the fallback thread's write
    with pytest.raises(RuntimeError, match="the database is gone"):
        asyncio.run(loop.arun_agent(agent=agent, message="again", trigger="openai"))
    assert AgentRun.objects.filter(agent=agent).count() == 1


def test_an_agent_without_tools_reads_nothing_before_its_model_call(org, member, provider):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from agents.runtime.loop import _prepare, _prepare_in_memory

    agent = make_agent(org, provider, "fake-model-1")
    agent.org = org
    assert _prepare_in_memory(agent, None, None) is True
    with CaptureQueriesContext(connection) as queries:
        tools, configs, prompt, history = _prepare(agent, member, None, [])
    assert (tools, configs, history, len(queries)) == ([], {}, [], 0)
    tooled = make_agent(org, provider, "fake-model-1", tools=["web_fetch"])
    tooled.org = org
    assert _prepare_in_memory(tooled, None, None) is False


def _finish(run, provider_id):
    from agents.services.runs import run_finish

    return run_finish(
        run=run, status=AgentRun.Status.SUCCEEDED, steps=[], tool_calls=0, prompt_tokens=3,
        completion_tokens=5, provider_id=provider_id, provider_source="org", model="m", duration_ms=7,
    )  # fmt: skip


def _started_run(org, provider):
    from agents.services.runs import run_build, run_save

    agent = make_agent(org, provider, "gpt-4o-mini")
    return run_save(run_build(org=org, agent=agent, user=None, message="hi"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_run_whose_provider_was_deleted_meanwhile_finishes_with_no_provider(org, provider, in_transaction):
    from django.db import transaction

    run = _started_run(org, provider)
    gone = Provider.objects.create(
        org=org, name="gone", provider_type="openai_compat", api_base="http://x/v1"
    )
    gone_id = gone.pk
    gone.delete()

    if in_transaction:
        with transaction.atomic():
            _finish(run, gone_id)
    else:
        _finish(run, gone_id)

    stored = AgentRun.objects.get(pk=run.pk)
    assert (stored.status, stored.provider_id, stored.completion_tokens) == ("succeeded", None, 5)


@pytest.mark.django_db(transaction=True)
def test_finishing_a_run_is_one_update(org, provider):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    run = _started_run(org, provider)
    with CaptureQueriesContext(connection) as queries:
        _finish(run, provider.pk)

    assert [q["sql"].split()[0] for q in queries] == ["UPDATE"]
    assert AgentRun.objects.get(pk=run.pk).provider_id == provider.pk


@pytest.mark.django_db
def test_a_run_is_checked_for_what_its_caller_gave(org, provider):
    from django.core.exceptions import ValidationError

    from agents.services.runs import run_build

    agent = make_agent(org, provider, "gpt-4o-mini")
    with pytest.raises(ValidationError) as refused:
        run_build(org=org, agent=agent, user=None, message="hi", conversation_id="not-a-uuid")
    assert list(refused.value.message_dict) == ["conversation_id"]
    run = run_build(org=org, agent=agent, user=None, message="x" * 10, trigger="t" * 40)
    assert (run.trigger, run.input, run.status) == ("t" * 32, "x" * 10, AgentRun.Status.RUNNING)


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_fields_are_refused_makes_no_call_and_no_row(org, member, provider, fake_upstream):
    """The run's fields are checked before its model call, though its row is made after."""
    from django.core.exceptions import ValidationError

    from agents.runtime.loop import arun_agent

    agent = make_agent(org, provider, "fake-model-1")
    before = fake_upstream.stats["requests"]
    with pytest.raises(ValidationError) as refused:
        asyncio.run(arun_agent(agent=agent, message="hi", user=member, conversation_id="not-a-uuid"))
    assert list(refused.value.message_dict) == ["conversation_id"]
    with pytest.raises(ValidationError) as refused:
        asyncio.run(arun_agent(agent=agent, message="hi", user=member, trigger=""))
    assert list(refused.value.message_dict) == ["trigger"]
    assert fake_upstream.stats["requests"] == before
    assert not AgentRun.objects.filter(agent=agent).exists()


@pytest.mark.django_db(transaction=True)
def test_a_streamed_runs_row_is_made_once_its_request_has_left(org, member, provider, monkeypatch):
    """Making the run's row is not on the path to its model call (under ``request_sent_signal``,
    as the /v1 views call it); the row keeps the id that the run's events carried from the start,
    and the caller's fields, cleaned."""
    from agents.llm import request_sent_signal
    from agents.llm import sent as llm_sent
    from agents.runtime import loop
    from agents.services import runs

    agent = make_agent(org, provider, "fake-model-1")
    # The row waits for the request this long at most; on a busy machine opening the connection
    # to the fake upstream can take longer than the default's 10 ms.
    monkeypatch.setattr(llm_sent, "REQUEST_SENT_WAIT_SECONDS", 30.0)
    real_made = runs.run_made
    sent_when_made: list[bool] = []

    def run_made(**kwargs):
        sent_when_made.append(sent.done())
        return real_made(**kwargs)

    monkeypatch.setattr(runs, "run_made", run_made)
    conversation = uuid.uuid4()

    async def scenario():
        nonlocal sent
        with request_sent_signal() as sent:
            events = loop.agent_events(
                agent=agent, message="a b", user=member, stream=True, conversation_id=str(conversation)
            )
            return [event async for event in events]

    sent = None
    *progress, end = asyncio.run(scenario())
    assert sent_when_made == [True]
    row = AgentRun.objects.get(pk=end["run"].pk)
    assert {event["run_id"] for event in progress} == {str(row.pk)}
    assert (row.conversation_id, row.input, row.output) == (conversation, "a b", "echo: a b")
