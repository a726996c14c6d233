"""Runs behind the OpenAI-compatible surface (``/v1/chat/completions``, ``/v1/responses``).

A request's ``model`` is either ``agent:<key>`` (the agent runs: its system prompt, tools and the
agent runtime, with the request's messages as the conversation) or a provider model name, which
goes straight through the LLM choke point with the request's own tools and sampling fields.

Who may name a provider model (a "raw" call): callers with at least the MEMBER role, through a
personal or service key, while ``OPENAI_RAW_MODELS`` is on (the default). Agent keys may only call
their own agent. The call still goes through the org's providers (BYOK order, failover, guards,
usage events), so a raw call spends exactly what the same call of an agent would.

Both endpoints consume one stream of events, ``("delta", text)``, ``("tool_call", {id, name,
arguments})`` (raw calls) and finally ``("done", Outcome)``; an :class:`ApplicationError` is raised
for a failure. A streamed run is read by the response itself (:func:`stream_events_here`, for async
views; an agent's run is the runtime's own generator, ``agents.runtime.loop.agent_events``) or
produced by a task of its own (:func:`stream_events`, for sync views), in a context that names the
``openai`` channel and the request, so that the choke point's usage event says where the call came
from even though the response body is sent after the request's middleware has returned. Closing the
stream (the client went away) ends the run, which closes the upstream call at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from accounts.models import ApiKey, Role
from agents.models import Agent
from agents.selectors.agents import AgentViewer
from chat.selectors.models import AGENT_PREFIX, aopenai_agent_get, openai_agent_get
from core import context
from core.db_threads import detached_context, server_loop_of_this_thread, start_once
from core.errors import PermissionDeniedError, ValidationError

CHANNEL = "openai"
PURPOSE = "openai"
NOBODY = uuid.UUID(int=0)
HISTORY_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

Event = tuple[str, Any]


@dataclass(frozen=True)
class Target:
    """What the request's ``model`` names: an agent, or a provider model (``agent`` is None)."""

    org: Any
    user: Any
    label: str  # the model as the client named it, echoed in every answer
    agent: Agent | None = None
    model: str | None = None


@dataclass(frozen=True)
class Outcome:
    """The end of a run: the answer and what it cost."""

    content: str
    tool_calls: list[dict]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class RawModelNotAllowed(PermissionDeniedError):
    code = "ERR_RAW_MODEL_NOT_ALLOWED"


def raw_models_allowed() -> bool:
    return bool(getattr(settings, "OPENAI_RAW_MODELS", True))


def _agent_viewer(*, user, role: str | None, api_key: ApiKey | None, model: str) -> AgentViewer | None:
    """Who reads the agent a request names, or None when it names a provider model (checked
    here: who may call one)."""
    bound = None
    if api_key is not None and api_key.kind == ApiKey.Kind.AGENT:
        bound = api_key.agent_id or NOBODY  # an agent key bound to no agent calls nothing
    if model.startswith(AGENT_PREFIX) or bound is not None:
        if bound is not None and not model.startswith(AGENT_PREFIX):
            raise RawModelNotAllowed("An agent key may only call its own agent (model 'agent:<key>').")
        return AgentViewer(user=user, role=role, bound_agent_id=bound)
    if not raw_models_allowed():
        raise RawModelNotAllowed(
            "Calls to provider models are turned off on this platform; use model 'agent:<key>'."
        )
    if Role.rank(role) < Role.rank(Role.MEMBER):
        raise RawModelNotAllowed(f"Calling a provider model needs the MEMBER role; you have {role}.")
    return None


def target_resolve(*, org, user, role: str | None, api_key: ApiKey | None, model: str) -> Target:
    """The agent or provider model a request names (reads the database; see the module doc)."""
    viewer = _agent_viewer(user=user, role=role, api_key=api_key, model=model)
    if viewer is None:
        return Target(org=org, user=user, label=model, model=model)
    agent = openai_agent_get(org=org, viewer=viewer, model=model)
    return Target(org=org, user=user, label=model, agent=agent)


async def atarget_resolve(*, org, user, role: str | None, api_key: ApiKey | None, model: str) -> Target:
    """:func:`target_resolve` from the event loop (``chat.selectors.models.aopenai_agent_get``)."""
    viewer = _agent_viewer(user=user, role=role, api_key=api_key, model=model)
    if viewer is None:
        return Target(org=org, user=user, label=model, model=model)
    agent = await aopenai_agent_get(org=org, viewer=viewer, model=model)
    return Target(org=org, user=user, label=model, agent=agent)


def providers_warm(target: Target) -> None:
    """Read the org's providers into the choke point's resolution cache now, from the view, so
    that hundreds of streams starting at once do not each take a database connection for it
    inside their stream (where an org without providers also fails as early as possible)."""
    from agents.llm import resolve_providers

    resolve_providers(org=target.org, user=target.user, agent=target.agent, model=target.model)


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text")
        )
    return "" if content is None else str(content)


def validate_messages(messages: Any) -> list[dict]:
    """Check the shape of ``messages`` (400 naming ``messages`` otherwise); returns them."""

    def bad(reason: str) -> ValidationError:
        return ValidationError(f"messages: {reason}", details={"fields": {"messages": [reason]}})

    if not isinstance(messages, list) or not messages:
        raise bad("a non-empty list of messages is required.")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"item {index} is not an object.")
        if message.get("role") not in ROLES:
            raise bad(f"item {index} has role {message.get('role')!r}; expected one of {sorted(ROLES)}.")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad(f"item {index}: content must be a string or a list of parts.")
        if content is None and not message.get("tool_calls") and message["role"] != "assistant":
            raise bad(f"item {index}: content is required.")
    return messages


def agent_turn(messages: list[dict]) -> tuple[list[dict], str]:
    """(history, message) of an agent call: the last message is the turn and must be the user's;
    the earlier ones are the conversation so far (system messages included, after the agent's own
    system prompt)."""
    last = messages[-1]
    if last.get("role") != "user":
        reason = "the last message of a call to an agent must be a user message."
        raise ValidationError(f"messages: {reason}", details={"fields": {"messages": [reason]}})
    history = []
    for message in messages[:-1]:
        entry = {k: v for k, v in message.items() if k in HISTORY_FIELDS}
        if entry["role"] == "developer":
            entry["role"] = "system"
        if isinstance(entry.get("content"), list):
            entry["content"] = _text_of(entry["content"])
        history.append(entry)
    return history, _text_of(last.get("content"))


# --- running -----------------------------------------------------------------------------------


async def _agent_events(target: Target, messages: list[dict], *, stream: bool) -> AsyncIterator[Event]:
    from agents.runtime.loop import agent_events

    history, message = agent_turn(messages)
    events = agent_events(
        agent=target.agent,
        message=message,
        history=history,
        user=target.user,
        trigger="openai",
        stream=stream,
    )
    async with contextlib.aclosing(events):
        async for event in events:
            if event["type"] == "delta" and event["text"]:
                yield "delta", event["text"]
            elif event["type"] == "end":
                yield "done", _agent_outcome(event["run"])


def _agent_outcome(run) -> Outcome:
    return Outcome(
        content=run.output or "",
        tool_calls=[],
        finish_reason="length" if run.finish_reason == "max_tool_iterations" else "stop",
        prompt_tokens=int(run.prompt_tokens or 0),
        completion_tokens=int(run.completion_tokens or 0),
    )


async def _raw_events(
    target: Target, messages: list[dict], *, stream: bool, options: dict[str, Any]
) -> AsyncIterator[Event]:
    from agents.llm import achat, astream

    request = {
        "org": target.org,
        "messages": messages,
        "user": target.user,
        "model": target.model,
        "tools": options.get("tools") or None,
        "temperature": options.get("temperature"),
        "max_tokens": options.get("max_tokens"),
        "purpose": PURPOSE,
        "extra": options.get("extra") or None,
    }
    if not stream:
        yield "done", _raw_outcome(await achat(**request))
        return
    # Iterate to the end even after ``done``: the choke point settles usage on the next pull.
    async with contextlib.aclosing(astream(**request)) as chunks:
        async for chunk in chunks:
            if chunk.type == "delta" and chunk.text:
                yield "delta", chunk.text
            elif chunk.type == "tool_call" and chunk.tool_call is not None:
                yield "tool_call", chunk.tool_call
            elif chunk.type == "done" and chunk.result is not None:
                yield "done", _raw_outcome(chunk.result)


def _raw_outcome(result) -> Outcome:
    return Outcome(
        content=result.content or "",
        tool_calls=list(result.tool_calls or []),
        finish_reason=result.finish_reason or ("tool_calls" if result.tool_calls else "stop"),
        prompt_tokens=int(result.prompt_tokens or 0),
        completion_tokens=int(result.completion_tokens or 0),
    )


def run_events(
    target: Target, messages: list[dict], *, stream: bool, options: dict[str, Any] | None = None
) -> AsyncIterator[Event]:
    """The events of one run of ``target`` (see the module doc)."""
    if target.agent is not None:
        return _agent_events(target, messages, stream=stream)
    return _raw_events(target, messages, stream=stream, options=options or {})


async def arun(target: Target, messages: list[dict], *, options: dict[str, Any] | None = None) -> Outcome:
    """A whole (non-streamed) run."""
    async with contextlib.aclosing(run_events(target, messages, stream=False, options=options)) as events:
        async for kind, value in events:
            if kind == "done":
                return value
    raise RuntimeError("the run ended without an outcome")  # pragma: no cover


def run_sync(target: Target, messages: list[dict], *, options: dict[str, Any] | None = None) -> Outcome:
    """:func:`arun` for sync views: on the server's loop under ASGI (whose LLM clients stay open),
    on a loop of its own elsewhere (tests), whose clients are closed before it ends."""
    from asgiref.sync import async_to_sync

    from agents.llm import aclose_clients, on_short_lived_loop

    async def run() -> Outcome:
        try:
            return await arun(target, messages, options=options)
        finally:
            if on_short_lived_loop():
                await aclose_clients()

    return async_to_sync(run)()


async def stream_events_here(
    target: Target,
    messages: list[dict],
    *,
    options: dict[str, Any] | None = None,
    request_id: str | None = None,
    api_key_id: Any = None,
) -> AsyncIterator[Event]:
    """The events of a streamed run, for an async view on the server's loop whose response body is
    the reader: no producer task, no queue between the upstream's chunk and the client's frame.

    The run starts at once, in a task of its own, up to its first event (the providers resolved,
    the guards passed, the upstream request sent and answered), and this returns once that request
    has left (``agents.llm.sent``; or the run has ended, or yielded): while the upstream works, the
    loop makes the view's response and sends its headers. The reader takes the first event from
    that task and reads the rest from the run itself. An error reaches the reader as the
    ApplicationError it was; closing the reader (the client went away: Django cancels the task)
    closes the upstream call at once; a run nobody starts reading within
    ``UNCLAIMED_STREAM_SECONDS`` (the client left before its response began) is cancelled."""

    async def run() -> AsyncIterator[Event]:
        context.adopt(CHANNEL, request_id=request_id, api_key_id=api_key_id)
        events = run_events(target, messages, stream=True, options=options)
        async with contextlib.aclosing(events):
            async for event in events:
                yield event

    from agents.llm import request_sent_signal, until_request_sent

    events = run()
    with request_sent_signal() as sent:
        first = asyncio.ensure_future(anext(events))
    claimed = False

    def unclaimed() -> None:
        if claimed:
            return
        if not first.done():
            first.cancel()  # thrown into the run, which closes the upstream call
        elif first.cancelled() or first.exception() is not None:
            return  # the run has ended (its error is read here, so asyncio does not log it)
        else:
            start_once(("close-unread-stream", events), events.aclose)

    timer = asyncio.get_running_loop().call_later(UNCLAIMED_STREAM_SECONDS, unclaimed)
    try:
        await until_request_sent(sent, first)
    except BaseException:  # the view was cancelled (its client left) before it got the reader
        timer.cancel()
        unclaimed()
        raise

    async def read() -> AsyncIterator[Event]:
        nonlocal claimed
        claimed = True
        timer.cancel()
        context.adopt(CHANNEL, request_id=request_id, api_key_id=api_key_id)
        try:
            try:
                event = await first
            except StopAsyncIteration:
                return
            yield event
            async for event in events:
                yield event
        finally:
            if not first.done():
                first.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await first
            await events.aclose()

    return read()


UNCLAIMED_STREAM_SECONDS = 30.0


def stream_events(
    target: Target,
    messages: list[dict],
    *,
    options: dict[str, Any] | None = None,
    request_id: str | None = None,
    api_key_id: Any = None,
) -> AsyncIterator[Event]:
    """The events of a streamed run, produced by a task of their own (see the module doc); an
    error reaches the consumer as the ApplicationError it was. Closing the returned generator early
    cancels the run and with it the upstream call.

    Called from a sync view's thread under an ASGI server, the run starts on the server's loop at
    once, while the view returns and the response starts: the model call does not wait for them.
    A stream nobody starts reading within ``UNCLAIMED_STREAM_SECONDS`` (the client left before its
    response began) is cancelled. Elsewhere (a test, WSGI) the run starts when reading starts."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    state: dict[str, Any] = {"producer": None, "claimed": False}

    async def produce() -> None:
        # No connection to give back here: the view's thread returned its own, and the run's
        # database steps run on pool threads that return theirs (``core.db_threads``).
        try:
            events = run_events(target, messages, stream=True, options=options)
            async with contextlib.aclosing(events):
                async for event in events:
                    queue.put_nowait(event)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(("error", exc))
        finally:
            queue.put_nowait(("end", None))

    @contextlib.contextmanager
    def scoped() -> Iterator[None]:
        """The context the run's usage events are attributed with (the producer keeps a copy)."""
        with context.channel_scope(CHANNEL, request_id=request_id):
            context.note_api_key(api_key_id)
            yield

    server = server_loop_of_this_thread()
    if server is not None:
        with scoped():
            run_context = detached_context()

        def begin_on_server() -> None:
            if state["producer"] is None:
                state["producer"] = server.create_task(produce(), context=run_context)
            server.call_later(UNCLAIMED_STREAM_SECONDS, unclaimed)

        def unclaimed() -> None:
            if not state["claimed"]:
                state["producer"].cancel()

        server.call_soon_threadsafe(begin_on_server)

    async def consume() -> AsyncIterator[Event]:
        state["claimed"] = True
        if state["producer"] is None:
            with scoped():
                state["producer"] = asyncio.ensure_future(produce())  # a copy of this context
        producer = state["producer"]
        try:
            while True:
                kind, value = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield kind, value
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer

    return consume()
