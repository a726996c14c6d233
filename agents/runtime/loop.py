"""The agent runtime: one run of an agent, the LLM ↔ tool-call loop.

``arun_agent`` (async) and ``run_agent`` (sync, for views and Celery) open an ``AgentRun``, build
the messages (rendered system prompt, conversation history, the user's message), call the LLM
choke point with the agent's tool schemas, run the tool calls of each answer (concurrently with
``asyncio.gather`` when the model asks for several), feed the results back as ``tool`` messages and
loop until the model answers without tool calls (finish reason ``stop``) or the agent's
``max_tool_iterations`` rounds of tools are spent (finish reason ``max_tool_iterations``; the run
still succeeds, with the model's last words or a message saying it stopped).

A tool that fails never breaks the run: its error goes back to the model as the tool's content
(``{"error": …}``). An LLM failure (no provider, auth, upstream down) marks the run failed with
``{code, message}`` and re-raises the ApplicationError so the API answers it (424 / 502).

Everything is recorded on the run: one step per LLM call (model, tokens, latency, finish reason)
and per tool call (name, arguments, result or error, duration), and the totals.

Hooks for the layers above:
- ``register_history_loader(fn)``: the chat app registers ``fn(*, org, agent, user,
  conversation_id) -> list[message dict]`` so a run with a ``conversation_id`` continues the
  conversation; a caller may also pass ``history=`` directly.
- ``agent_events`` is the run as an async generator of its events, ``{"type": "llm" | "tool_call"
  | "tool_result", …}`` as the run progresses (``tool_result`` carries the recorded ``step`` and
  the unclipped ``result``), and last ``{"type": "end", "run": …}``; the OpenAI-compatible surface
  reads it in its response's own task. ``arun_agent``'s ``on_event`` is an async callback that
  receives the same events (the chat stream forwards them as ``chat.tool_call`` /
  ``chat.tool_result``).
- ``stream=True``: each LLM step goes through ``agents.llm.astream`` and every text chunk is an
  event ``{"type": "delta", "text": …}`` as soon as the upstream sends it (the chat turn and the
  OpenAI-compatible surface stream these). Cancelling the reader's task (or closing the generator)
  closes the upstream stream at once (``aclosing``) and records the run as cancelled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from uuid import UUID

from asgiref.sync import async_to_sync

from agents.models import Agent, AgentRun
from agents.services.runs import arun_save, run_finish, run_later
from agents.tools.registry import (
    Tool,
    ToolContext,
    aexecute,
    config_for,
    get_tool,
    openai_tool_schemas,
    tools_for_agent,
)
from core.db_threads import run_db
from core.errors import ApplicationError

FINISH_STOP = "stop"
FINISH_MAX_TOOL_ITERATIONS = "max_tool_iterations"
# What a tool result may weigh in the conversation and in the recorded steps.
MAX_TOOL_CONTENT_CHARS = 100_000
MAX_STEP_VALUE_CHARS = 4_000

HistoryLoader = Callable[..., list[dict[str, Any]]]
EventCallback = Callable[[dict[str, Any]], Awaitable[None]]

_history_loader: HistoryLoader | None = None


def register_history_loader(loader: HistoryLoader) -> HistoryLoader:
    """Let a higher app (chat) supply a conversation's earlier messages to runs that name it."""
    global _history_loader
    _history_loader = loader
    return loader


def build_messages(
    *, system_prompt: str, history: list[dict[str, Any]], message: str
) -> list[dict[str, Any]]:
    """System prompt (when there is one), the conversation so far, then the user's message."""
    messages: list[dict[str, Any]] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(history)
    messages.append({"role": "user", "content": message})
    return messages


def _render_system_prompt(agent: Agent, user) -> str:
    prompt = agent.system_prompt or ""
    if "{{" not in prompt:  # no variable to fill in (most prompts): no context to build per run
        return prompt
    try:
        from agents.selectors.agents import agent_system_prompt_render
    except ImportError:  # pragma: no cover - the preview selector is part of the agents CRUD
        return prompt
    rendered, _context, _unknown = agent_system_prompt_render(agent=agent, user=user)
    return rendered


def _prepare(agent: Agent, user, conversation_id, history):
    """Everything the loop reads from the database, in one trip to a thread."""
    from agents.selectors.tools import tool_settings

    settings = tool_settings(org_id=agent.org_id) if agent.tools else {}
    tools = tools_for_agent(agent, settings=settings)
    configs = {tool.name: config_for(tool, settings) for tool in tools}
    if history is None:
        history = []
        if conversation_id is not None and _history_loader is not None:
            history = list(
                _history_loader(org=agent.org, agent=agent, user=user, conversation_id=conversation_id)
            )
    return tools, configs, _render_system_prompt(agent, user), history


def _prepare_in_memory(agent: Agent, conversation_id, history) -> bool:
    """Whether ``_prepare`` reads nothing from the database: an agent without tools, whose history
    is given (or there is none to load), spares its run a thread hop before the model call."""
    loads_history = history is None and conversation_id is not None and _history_loader is not None
    return not agent.tools and not loads_history and Agent.org.is_cached(agent)


def _clip(value: Any) -> Any:
    """A value for the recorded steps: as is when small, else its JSON cut short."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= MAX_STEP_VALUE_CHARS:
        return value
    return text[:MAX_STEP_VALUE_CHARS] + "…"


def _tool_content(outcome: dict[str, Any]) -> str:
    """What the model reads as the tool's answer: the result as JSON, or ``{"error": …}``."""
    if "error" in outcome:
        body: Any = {"error": outcome["error"]}
    else:
        body = outcome["result"]
    text = json.dumps(body, ensure_ascii=False, default=str)
    if len(text) > MAX_TOOL_CONTENT_CHARS:
        text = json.dumps({"truncated": True, "content": text[:MAX_TOOL_CONTENT_CHARS]}, ensure_ascii=False)
    return text


class _Totals:
    """Running sums of one run."""

    def __init__(self, agent: Agent) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.tool_calls = 0
        self.provider_id: UUID | None = None
        self.provider_source = ""
        self.model = agent.model or ""
        self.last: Any = None  # the last model call's result

    def add(self, result) -> None:
        self.last = result
        self.prompt_tokens += int(result.prompt_tokens or 0)
        self.completion_tokens += int(result.completion_tokens or 0)
        self.provider_id = result.provider_id
        self.provider_source = result.provider_source or self.provider_source
        self.model = result.model or self.model


async def _run_tool_call(
    call: dict[str, Any], tools: dict[str, Tool], configs: dict[str, dict], base_ctx: ToolContext
) -> dict[str, Any]:
    """One tool call of the model: parse its arguments, run it, and return the step record."""
    name = str(call.get("name") or "")
    raw_args = call.get("arguments") or "{}"
    step: dict[str, Any] = {"type": "tool", "id": call.get("id", ""), "name": name}
    started = time.perf_counter()
    tool = tools.get(name)
    try:
        args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
    except json.JSONDecodeError as exc:
        args, parse_error = None, f"The arguments are not valid JSON: {exc.msg}."
    else:
        parse_error = None if isinstance(args, dict) else "The arguments must be a JSON object."
    step["arguments"] = _clip(args if args is not None else raw_args)
    if tool is None:
        reason = "is disabled in this organisation" if get_tool(name) else "does not exist"
        outcome: dict[str, Any] = {"error": f"The tool {name!r} {reason} or is not available to this agent."}
    elif parse_error:
        outcome = {"error": parse_error}
    else:
        ctx = ToolContext(
            org=base_ctx.org,
            agent=base_ctx.agent,
            user=base_ctx.user,
            run_id=base_ctx.run_id,
            config=configs.get(name, {}),
        )
        outcome = await aexecute(tool, ctx, args)
    if "error" in outcome:
        step["error"] = outcome["error"]
    else:
        step["result"] = _clip(outcome["result"])
    step["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
    step["content"] = _tool_content(outcome)
    step["_result"] = outcome.get("result")  # unclipped, for the tool_result event only
    return step


async def _save_when_out(make: Callable[[], AgentRun], first_event: asyncio.Future | None) -> AgentRun:
    """Make a run's row (``make``, its fields checked already) and save it once its first model
    call's request has left (when the caller waits for that: ``agents.llm.sent``) and, for a
    streamed run, once its first event is out (``after_first_event``): making the row takes the
    loop for about 0.1 ms and compiling and sending the statement for about a millisecond, which
    neither the call's answer and first token nor those of the runs that started at the same time
    should wait for."""
    from agents.llm import after_first_event, after_request_sent

    await after_request_sent()
    if first_event is not None:
        await after_first_event(first_event)
    return await arun_save(make())


async def agent_events(
    *,
    agent: Agent,
    message: str,
    user=None,
    conversation_id: UUID | None = None,
    trigger: str = "wake",
    history: list[dict[str, Any]] | None = None,
    stream: bool = False,
    run: AgentRun | None = None,
    run_written: Awaitable[Any] | None = None,
    run_id: UUID | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Run the agent once on ``message``, yielding its events as they happen (each with the run's
    ``run_id``), and last ``{"type": "end", "run": <the finished AgentRun>}``; see the module doc.

    The run goes on in the reader's own task: a text chunk travels from the upstream's socket to
    the reader in the same step of the loop, with no task or queue between them. Closing the
    generator before its end (the client went away) closes the upstream call and records the run
    as cancelled, as cancelling the reader's task does.

    A caller that writes the run's row itself, with rows of its own in one transaction (a chat
    turn that opens a conversation), passes ``run_written``, which completes once that row is
    committed (or raises if it was not), and either the ``run`` it built (``run_build``) or only
    the ``run_id`` it will have: then ``run_written`` answers the row (the caller makes it after
    the call has left, as the runtime makes its own)."""
    started = time.perf_counter()
    first_event = asyncio.get_running_loop().create_future()
    if run is not None:
        org = run.org
    elif Agent.org.is_cached(agent):  # the callers' selectors attach the org they scoped by
        org = agent.org
    else:
        org = await run_db(lambda: agent.org)  # load the FK off the event loop, once
    if not Agent.org.is_cached(agent):  # a run built by the caller: the loop reads it from here on
        agent.org = org
    if run_written is None:
        if run is not None or run_id is not None:
            raise ValueError("A run built by the caller needs run_written.")
        # The fields are checked now (a bad one refuses the run before its call); the row is made
        # and written while the first model call is on its way (``_save_when_out``): nothing
        # before the call needs more than its id, and everything after (tools, the run's end)
        # waits for it (``saved``).
        run_pk, make = run_later(
            org=org, agent=agent, user=user, message=message, conversation_id=conversation_id, trigger=trigger
        )
        saving = asyncio.ensure_future(_save_when_out(make, first_event if stream else None))
    else:
        run_pk = run.pk if run is not None else run_id
        if run_pk is None:
            raise ValueError("run_written needs the run or its run_id.")
        saving = asyncio.ensure_future(run_written)
    events_run_id = str(run_pk)
    given = run

    async def saved() -> AgentRun:
        """The run's row, once written."""
        if not first_event.done():  # nothing was streamed before this: the row may go now
            first_event.set_result(None)
        written = await asyncio.shield(saving)
        return given if given is not None else written

    steps: list[dict[str, Any]] = []
    totals = _Totals(agent)

    async def finish(status: str, **fields: Any) -> AgentRun:
        run = await saved()
        return await run_db(
            run_finish,
            run=run,
            status=status,
            steps=steps,
            tool_calls=totals.tool_calls,
            prompt_tokens=totals.prompt_tokens,
            completion_tokens=totals.completion_tokens,
            provider_id=totals.provider_id,
            provider_source=totals.provider_source,
            model=totals.model,
            duration_ms=int((time.perf_counter() - started) * 1000),
            **fields,
        )

    def event(fields: dict[str, Any]) -> dict[str, Any]:
        if not first_event.done():  # the reader hands it out before this generator goes on
            first_event.set_result(None)
        fields["run_id"] = events_run_id
        return fields

    try:
        if _prepare_in_memory(agent, conversation_id, history):
            tools, configs, system_prompt, history = _prepare(agent, user, conversation_id, history)
        else:
            tools, configs, system_prompt, history = await run_db(
                _prepare, agent, user, conversation_id, history
            )
        by_name = {tool.name: tool for tool in tools}
        schemas = openai_tool_schemas(tools) or None
        messages = build_messages(system_prompt=system_prompt, history=history, message=message)
        base_ctx = ToolContext(org=org, agent=agent, user=user, run_id=run_pk)
        rounds = 0
        while True:
            async with aclosing(_llm_step(agent, user, messages, schemas, steps, totals, stream)) as texts:
                async for text in texts:
                    yield event({"type": "delta", "text": text})
            result = totals.last
            yield event({"type": "llm", "step": steps[-1]})
            await saved()
            if not result.tool_calls:
                finished = await finish(
                    AgentRun.Status.SUCCEEDED, finish_reason=FINISH_STOP, output=result.content or ""
                )
                break
            if rounds >= agent.max_tool_iterations:
                output = result.content or (
                    f"Stopped after {rounds} rounds of tool calls (the agent's max_tool_iterations) "
                    "without a final answer."
                )
                finished = await finish(
                    AgentRun.Status.SUCCEEDED, finish_reason=FINISH_MAX_TOOL_ITERATIONS, output=output
                )
                break
            rounds += 1
            messages.append(_assistant_message(result))
            for call in result.tool_calls:
                yield event({"type": "tool_call", "call": call})
            tool_steps = await asyncio.gather(
                *(_run_tool_call(call, by_name, configs, base_ctx) for call in result.tool_calls)
            )
            for call, step in zip(result.tool_calls, tool_steps, strict=True):
                content = step.pop("content")
                full_result = step.pop("_result", None)
                messages.append({"role": "tool", "tool_call_id": call.get("id", ""), "content": content})
                step["round"] = rounds
                steps.append(step)
                totals.tool_calls += 1
                yield event({"type": "tool_result", "step": step, "result": full_result})
    except ApplicationError as exc:
        await finish(AgentRun.Status.FAILED, error={"code": exc.code, "message": exc.message})
        raise
    except (asyncio.CancelledError, GeneratorExit):  # the reader's task cancelled, or it closed this
        await asyncio.shield(finish(AgentRun.Status.CANCELLED, finish_reason="cancelled"))
        raise
    except Exception as exc:
        await finish(
            AgentRun.Status.FAILED,
            error={"code": "ERR_INTERNAL", "message": f"The run failed: {type(exc).__name__}."},
        )
        raise
    yield {"type": "end", "run": finished}


async def arun_agent(*, on_event: EventCallback | None = None, **kwargs: Any) -> AgentRun:
    """Run the agent once (the arguments of :func:`agent_events`); returns the finished AgentRun.
    ``on_event`` receives every event but the end as it happens; the run waits for it."""
    async with aclosing(agent_events(**kwargs)) as events:
        async for event in events:
            if event["type"] == "end":
                return event["run"]
            if on_event is not None:
                try:
                    await on_event(event)
                except BaseException as exc:
                    # As if raised where the event was made: the run records it and re-raises.
                    await events.athrow(exc)
                    raise
    raise RuntimeError("the run ended without its end event")  # pragma: no cover


async def _llm_step(
    agent: Agent, user, messages, schemas, steps, totals: _Totals, stream: bool
) -> AsyncIterator[str]:
    """One call of the choke point, recorded as a step and as ``totals.last``; streamed upstream
    when ``stream``, yielding every text chunk as the upstream sends it."""
    from agents.llm import achat, astream

    started = time.perf_counter()
    request = {
        "org": agent.org,
        "messages": messages,
        "user": user,
        "agent": agent,
        "model": agent.model or None,
        "tools": schemas,
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "purpose": "agent_run",
    }
    if not stream:
        result = await achat(**request)
    else:
        result = None
        # Iterate to the end even after ``done``: the choke point settles usage on the next pull.
        async with aclosing(astream(**request)) as chunks:
            async for chunk in chunks:
                if chunk.type == "delta" and chunk.text:
                    yield chunk.text
                elif chunk.type == "done":
                    result = chunk.result
        if result is None:  # pragma: no cover - astream ends with done or raises
            raise ApplicationError(
                "The model sent no answer.", code="ERR_PROVIDER_UNAVAILABLE", status_code=502
            )
    totals.add(result)
    steps.append(
        {
            "type": "llm",
            "model": result.model,
            "provider_source": result.provider_source,
            "prompt_tokens": int(result.prompt_tokens or 0),
            "completion_tokens": int(result.completion_tokens or 0),
            "latency_ms": round(float(result.latency_ms or (time.perf_counter() - started) * 1000), 2),
            "finish_reason": result.finish_reason,
            "tool_calls": len(result.tool_calls or []),
        }
    )


def _assistant_message(result) -> dict[str, Any]:
    """The model's answer as it goes back into the conversation (with its tool calls)."""
    return {
        "role": "assistant",
        "content": result.content or None,
        "tool_calls": [
            {
                "id": call.get("id", ""),
                "type": "function",
                "function": {"name": call.get("name", ""), "arguments": call.get("arguments") or "{}"},
            }
            for call in result.tool_calls
        ],
    }


def run_agent(**kwargs: Any) -> AgentRun:
    """Sync entry point of :func:`arun_agent` (views, Celery tasks, management commands).

    Inside an ASGI request the run goes onto the server's event loop, whose LLM clients stay
    open for the next calls; elsewhere (a Celery worker, a test) ``async_to_sync`` makes a loop for
    this one run, and its clients are closed before that loop ends.
    """
    from asgiref.sync import SyncToAsync

    short_lived_loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None) is None

    async def run() -> AgentRun:
        try:
            return await arun_agent(**kwargs)
        finally:
            if short_lived_loop:
                from agents.llm import aclose_clients

                await aclose_clients()

    return async_to_sync(run)()
