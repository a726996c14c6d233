"""The streaming turn: one user message, one assistant answer streamed as events.

``astart_turn`` persists the user message and an assistant message (status ``streaming``) with the
turn's first event (``message.start``, seq 1) and starts the agent run **detached from the
request**: an asyncio task on the server's own loop (or, where there is no long-lived loop, a
Celery task or a test, on a background loop of the process), not tied to any response. For a turn
that opens a conversation the run starts first and the rows, its run's ``AgentRun`` with them,
are written while its model call is on its way, all in one statement (``core.row_inserts``; under
a server, together with those of the turns opening at the same moment, from the loop itself on
PostgreSQL: ``core.loop_writer``, else from a writer thread: ``core.batch_writer``). On a
server's loop the response goes first, once the call's request has left, and the rows once the
run's first event is out; the ids it answers are version 7 UUIDs, which lookups that come before
the commit wait for (``chat.selectors.messages.row_on_its_way``). The log follows their commit.
Every event of the run gets the next per-message ``seq`` and is published at once on the turn's
channel-layer group. One log writer per loop (``_Hub``) appends the events of all its running turns to the
``MessageEvent`` log in one transaction every ``FLUSH_SECONDS``, with the messages' text, parts and
citations every ``PROGRESS_SECONDS``; a turn's outcome (status, tokens, run) is written in the same
transaction as its last events, so that "not streaming" always means "the log is complete".

Followers (``aturn_events``; the SSE endpoints and the WebSocket consumer are followers) subscribe
to the group first, then read the log after their ``after_seq``, and merge both by seq: no gap, no
repeat. A live event whose seq jumps ahead means events not yet flushed (or a push the layer
dropped): the follower re-reads the log until the gap closes. A finished turn replays and ends.

Cancel (``acancel_turn``, from any process) marks ``cancel_requested_at`` and signals the turn: in
its own process directly, elsewhere through the processes' control group; each process also reads
the flags of all its running turns in one query every ``CANCEL_POLL_SECONDS`` (the in-memory layer
does not cross processes). The run's task is cancelled, which closes the upstream stream at once;
the partial text is kept with status ``cancelled`` and the usage so far is recorded.

Events: ``message.start {conversation_id, message_id}``, ``message.delta {text}``,
``tool.call {id, name, arguments}``, ``tool.result {id, output | error}``,
``citation {document_id, chunk_id, score}``, ``usage {prompt_tokens, completion_tokens, cost_usd}``,
``message.end {finish_reason}``, ``error {code, message}``; the last is always ``message.end`` or
``error``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Membership
from agents.llm import after_first_event, request_sent_signal, until_request_sent
from agents.models import Agent
from agents.registries import estimate_cost_micros
from agents.selectors.agents import AgentViewer, aagent_for_run, agent_for_run
from agents.services.runs import run_later
from chat.models import Conversation, Message, MessageEvent
from chat.models.conversations import Channel
from chat.selectors.conversations import conversation_get, conversation_llm_history
from chat.selectors.messages import turn_log_read, turn_message_get
from chat.services.conversations import MAX_CONTENT_CHARS, clean_title
from core import context as request_context
from core import realtime
from core.batch_writer import BatchWriter
from core.commits import commit_without_flush_wait
from core.db_threads import on_short_lived_loop, server_loop_of_this_thread
from core.errors import ApplicationError, ConflictError, NotFoundError, ValidationError
from core.ids import uuid7
from core.loop_writer import LoopRowWriter
from core.row_inserts import RowGroup, insert_rows, server_binding_cursor

logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"message.end", "error"})
ON_DISCONNECT = ("continue", "cancel")
FLUSH_SECONDS = 0.075
PROGRESS_SECONDS = 1.0
FINAL_WRITE_TIMEOUT = 30.0
CANCEL_POLL_SECONDS = 0.25
WATCH_IDLE_SECONDS = 30.0
GAP_RETRY_SECONDS = 0.05
TITLE_FROM_MESSAGE_CHARS = 60
OPENINGS_BATCH = 100

# Database work of detached turns and followers: any pool thread (they outlive the request, so
# they must not use its thread-sensitive executor).
_db_read_log = database_sync_to_async(turn_log_read, thread_sensitive=False)


@dataclass
class TurnStarted:
    """What ``astart_turn`` created: the conversation, the user message and the assistant message
    (whose id names the turn for ``/stream``, ``/cancel`` and ``aturn_events``)."""

    conversation_id: uuid.UUID
    user_message_id: uuid.UUID
    message_id: uuid.UUID
    conversation_created: bool = False


@dataclass
class TurnEvent:
    """One event of a turn: its sequence number, name and JSON payload."""

    seq: int
    event: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "event": self.event, "data": self.data}


def turn_group(message_id: Any) -> str:
    """Channel-layer group of a turn's events."""
    return f"chat.turn.{uuid.UUID(str(message_id)).hex}"


# --- starting a turn ---------------------------------------------------------------------------


def resolve_agent(*, org, user, agent: Any, viewer: AgentViewer | None = None) -> Agent:
    """The agent a turn names (an Agent, its id or its key) if the caller may see it, else 404."""
    if isinstance(agent, Agent):
        if agent.org_id != org.pk:
            raise NotFoundError("Agent not found.")
        return agent
    if viewer is None:
        role = Membership.objects.filter(org=org, user=user).values_list("role", flat=True).first()
        viewer = AgentViewer(user=user, role=role)
    ref = str(agent or "").strip()
    if not ref:
        raise ValidationError("agent is required (an agent id or key).", details={"agent": ["Required."]})
    try:
        agent_id = uuid.UUID(ref)
    except ValueError:
        found = agent_for_run(org=org, viewer=viewer, key=ref)
    else:
        found = agent_for_run(org=org, viewer=viewer, agent_id=agent_id)
    if found is None:
        raise NotFoundError("Agent not found.")
    return found


async def aresolve_agent(*, org, user, agent: Any, viewer: AgentViewer) -> Agent:
    """:func:`resolve_agent` from the event loop (``agents.selectors.agents.aagent_for_run``)."""
    if isinstance(agent, Agent):
        return resolve_agent(org=org, user=user, agent=agent, viewer=viewer)
    ref = str(agent or "").strip()
    if not ref:
        raise ValidationError("agent is required (an agent id or key).", details={"agent": ["Required."]})
    try:
        agent_id = uuid.UUID(ref)
    except ValueError:
        found = await aagent_for_run(org=org, viewer=viewer, key=ref)
    else:
        found = await aagent_for_run(org=org, viewer=viewer, agent_id=agent_id)
    if found is None:
        raise NotFoundError("Agent not found.")
    return found


def _clean_message(message: Any) -> str:
    if not isinstance(message, str) or not message.strip():
        raise ValidationError("message is required.", details={"message": ["Required, non-empty text."]})
    if len(message) > MAX_CONTENT_CHARS:
        raise ValidationError(
            "The message is too long.", details={"message": [f"At most {MAX_CONTENT_CHARS}."]}
        )
    return message


def _turn_check(*, message: Any, channel: str, on_disconnect: str) -> str:
    """The checks of a turn that need no database; returns the message."""
    message = _clean_message(message)
    if on_disconnect not in ON_DISCONNECT:
        raise ValidationError(
            "on_disconnect must be continue or cancel.", details={"on_disconnect": ["continue | cancel"]}
        )
    if channel not in Channel.values:
        raise ValidationError(f"Unknown channel {channel!r}.")
    return message


def _assistant_row(*, org, conversation, index: int, agent: Agent, reply_to, on_disconnect, pk=None):
    return Message(
        **({"pk": pk} if pk is not None else {}),
        org=org,
        conversation=conversation,
        index=index,
        role=Message.Role.ASSISTANT,
        status=Message.Status.STREAMING,
        model=(agent.model or "")[:200],
        reply_to=reply_to,
        on_disconnect=on_disconnect,
        last_seq=1,
    )


def _start_event(started: TurnStarted) -> dict[str, str]:
    return {"conversation_id": str(started.conversation_id), "message_id": str(started.message_id)}


def _opened_audit(*, org, user, conversation, agent: Agent):
    """The ``conversation.created`` audit row of a turn that opens a conversation, unsaved."""
    from accounts.services.audit import audit_entry

    return audit_entry(
        org=org, actor=user, action="conversation.created", entity=conversation, after={"agent": agent.pk}
    )


@dataclass
class OpeningRows:
    """The rows of a turn that opens a conversation, built (not saved) under the ids its
    ``TurnStarted`` chose, with the audit row's request details taken where they were built."""

    conversation: Conversation
    audit: Any
    messages: tuple[Message, Message]
    start: MessageEvent
    run: Any = None  # the turn's AgentRun, written with them (``_opening_turn``)


def turn_opening_rows(
    *,
    org,
    user,
    agent: Agent,
    message: str,
    channel: str,
    started: TurnStarted,
    on_disconnect: str,
    run: Any = None,
) -> OpeningRows:
    """The conversation, its audit row, the user message, the streaming assistant message and
    ``message.start`` of a turn that opens a conversation (see :func:`astart_turn`), and the run
    that answers it when the caller built one."""
    now = timezone.now()
    conversation = Conversation(
        pk=started.conversation_id,
        org=org,
        user=user,
        agent=agent,
        title=clean_title(message[:TITLE_FROM_MESSAGE_CHARS]),
        channel=channel,
        message_count=2,
        last_message_at=now,
    )
    audit = _opened_audit(org=org, user=user, conversation=conversation, agent=agent)
    user_message = Message(
        pk=started.user_message_id,
        org=org,
        conversation=conversation,
        index=0,
        role=Message.Role.USER,
        content=message,
        parts=[{"type": "text", "text": message}],
    )
    assistant = _assistant_row(
        org=org,
        conversation=conversation,
        index=1,
        agent=agent,
        reply_to=user_message,
        on_disconnect=on_disconnect,
        pk=started.message_id,
    )
    start = MessageEvent(message=assistant, seq=1, event="message.start", data=_start_event(started))
    return OpeningRows(
        conversation=conversation, audit=audit, messages=(user_message, assistant), start=start, run=run
    )


def turn_opening_groups(openings: list[OpeningRows]) -> list[RowGroup]:
    """The rows of any number of opening turns, with the rows of their runs, for one statement
    (``core.row_inserts``)."""
    from accounts.models import AuditLog
    from agents.services.runs import run_row_groups, run_rows

    return [
        (Conversation, [o.conversation for o in openings]),
        (AuditLog, [o.audit for o in openings]),
        (Message, [m for o in openings for m in o.messages]),
        (MessageEvent, [o.start for o in openings]),
        *run_row_groups([run_rows(o.run) for o in openings if o.run is not None]),
    ]


def _async_commit() -> bool:
    return settings.CHAT_ASYNC_COMMIT


def turn_openings_write(openings: list[OpeningRows]) -> None:
    """Write the rows of any number of opening turns, with the rows of their runs, all or none:
    on PostgreSQL in one statement, whose commit does not wait for the disk
    (``CHAT_ASYNC_COMMIT``), being on the path to the turns' first events."""
    insert_rows(turn_opening_groups(openings), async_commit=_async_commit())


@transaction.atomic
def turn_prepare(
    *, org, user, agent: Any, message: str, conversation_id: Any, channel: str, on_disconnect: str
) -> tuple[TurnStarted, Agent, list[dict[str, Any]]]:
    """Validate, then write the user message, the streaming assistant message and ``message.start``;
    returns the turn, the agent and the LLM history before the user message."""
    message = _turn_check(message=message, channel=channel, on_disconnect=on_disconnect)
    agent = resolve_agent(org=org, user=user, agent=agent)
    created = False
    if conversation_id:
        try:
            conversation_uuid = uuid.UUID(str(conversation_id))
        except ValueError:
            raise ValidationError(
                "conversation_id is not a valid id.", details={"conversation_id": ["Not a UUID."]}
            ) from None
        conversation_get(org=org, user=user, conversation_id=conversation_uuid)  # 404 first
        conversation = Conversation.objects.select_for_update().get(pk=conversation_uuid)
    else:
        conversation = Conversation.objects.create(
            org=org,
            user=user,
            agent=agent,
            title=clean_title(message[:TITLE_FROM_MESSAGE_CHARS]),
            channel=channel,
        )
        _opened_audit(org=org, user=user, conversation=conversation, agent=agent).save(force_insert=True)
        created = True
    last = (
        Message.objects.filter(conversation=conversation)
        .order_by("-index")
        .values_list("index", flat=True)
        .first()
    )
    index = 0 if last is None else last + 1
    user_message = Message.objects.create(
        org=org,
        conversation=conversation,
        index=index,
        role=Message.Role.USER,
        content=message,
        parts=[{"type": "text", "text": message}],
    )
    assistant = _assistant_row(
        org=org,
        conversation=conversation,
        index=index + 1,
        agent=agent,
        reply_to=user_message,
        on_disconnect=on_disconnect,
    )
    assistant.save(force_insert=True)
    now = timezone.now()
    changes: dict[str, Any] = {
        "message_count": F("message_count") + 2,
        "last_message_at": now,
        "updated_at": now,
    }
    if conversation.agent_id is None:
        changes["agent"] = agent
    Conversation.objects.filter(pk=conversation.pk).update(**changes)
    history = conversation_llm_history(conversation_id=conversation.pk, before_index=index)
    started = TurnStarted(
        conversation_id=conversation.pk,
        user_message_id=user_message.pk,
        message_id=assistant.pk,
        conversation_created=created,
    )
    MessageEvent.objects.create(message=assistant, seq=1, event="message.start", data=_start_event(started))
    return started, agent, history


def _make_turn(
    *, started: TurnStarted, org, user, agent: Agent, message: str, history: list, channel: str
) -> _Turn:
    ctx = request_context.current()
    return _Turn(
        started=started,
        org=org,
        user=user,
        agent=agent,
        message=message,
        history=history,
        channel=channel,
        request_id=ctx.request_id if ctx.request_id != "-" else None,
        api_key_id=ctx.api_key_id,
    )


def _opening_turn(
    *, org, user, agent: Any, message: str, conversation_id: Any, channel: str, on_disconnect: str
) -> tuple[_Turn, dict[str, Any]] | None:
    """A turn that opens a conversation with an Agent in hand, under ids chosen here, with the
    arguments of its ``turn_opening_rows``; None for any other turn. Raises for bad input."""
    if conversation_id or not isinstance(agent, Agent):
        return None
    text = _turn_check(message=message, channel=channel, on_disconnect=on_disconnect)
    agent_row = resolve_agent(org=org, user=user, agent=agent)
    started = TurnStarted(  # ids that say they are new (``core.ids``): see ``astart_turn``
        conversation_id=uuid7(),
        user_message_id=uuid7(),
        message_id=uuid7(),
        conversation_created=True,
    )
    turn = _make_turn(
        started=started, org=org, user=user, agent=agent_row, message=text, history=[], channel=channel
    )
    # Its run's row is written with its rows (``turn_openings_write``), not apart by the runtime;
    # its fields are checked now, and the row is made with the others (``_opening_rows``), after
    # the call has left, as the runtime makes its own runs' rows.
    turn.run_pk, turn.make_run = run_later(
        org=org,
        agent=agent_row,
        user=user,
        message=text,
        conversation_id=started.conversation_id,
        trigger="chat",
    )
    if not Agent.org.is_cached(agent_row):  # the run reads it on the loop
        agent_row.org = org
    opening = {
        "org": org,
        "user": user,
        "agent": agent_row,
        "message": text,
        "channel": channel,
        "started": started,
        "on_disconnect": on_disconnect,
    }
    return turn, opening


def _write_opening_rows(rows: OpeningRows) -> None:
    turn_openings_write([rows])


# Under a server, the openings of concurrent turns are written together: at 20 turns starting at
# once, a few statements instead of twenty transactions. From the loop on PostgreSQL
# (``core.loop_writer``), else from a thread (``core.batch_writer``), which sync views use too.
_openings: BatchWriter[OpeningRows] = BatchWriter(
    "chat-openings", turn_openings_write, _write_opening_rows, max_batch=OPENINGS_BATCH
)
_loop_openings: LoopRowWriter[OpeningRows] = LoopRowWriter(
    "chat-openings",
    turn_opening_groups,
    fallback=_openings,
    async_commit=_async_commit,
    max_batch=OPENINGS_BATCH,
    yield_first=False,  # written once the turn's request has left (``astart_turn``)
)


def _opening_rows(turn: _Turn, writes: dict[str, Any]) -> OpeningRows:
    turn.run_row = turn.make_run()
    return turn_opening_rows(**writes, run=turn.run_row)


def _opened(turn: _Turn, error: BaseException | None) -> None:
    """After its rows were written: let the hub write the turn's log, or call its run off."""
    _call_on_loop(turn, turn.abandon if error is not None else turn.mark_stored)


async def astart_turn(
    *,
    org,
    user,
    agent: Any,
    message: str,
    conversation_id: Any = None,
    channel: str,
    on_disconnect: str = "continue",
) -> TurnStarted:
    """Start a turn (see the module doc); ApplicationErrors for bad input are raised before anything
    is written or started. ``agent`` is an Agent, an agent id or an agent key the user may see.

    A turn that opens a conversation with an Agent in hand needs nothing from the database before
    its model call, so the run starts at once, under ids chosen here. On a server's loop it returns
    once the call's request has left (``agents.llm.sent``), before its rows are written: the
    conversation, the messages and the run's row follow (:func:`_store_opening`) once the run's
    first event is out, and the turn's log only once they are committed; if they fail, the run is
    called off and its followers get an ``error`` event. Its ids are version 7 UUIDs, so a lookup
    that comes before the commit waits for it (``chat.selectors.messages.row_on_its_way``).
    Elsewhere (a sync caller's short-lived loop) the rows are written before it returns. A turn
    that continues a conversation reads its history first (``turn_prepare``), then starts."""
    args = {"org": org, "user": user, "agent": agent, "message": message, "channel": channel}
    opening = _opening_turn(**args, conversation_id=conversation_id, on_disconnect=on_disconnect)
    if opening is not None:
        turn, writes = opening
        _spawn(turn, stored=False)
        try:
            if on_short_lived_loop():  # a sync caller (a test): its thread, connection and transaction
                await sync_to_async(_write_opening_rows)(_opening_rows(turn, writes))
            else:  # a server's loop: the call goes out first, then the answer, then the rows
                await until_request_sent(turn.request_sent, turn.task)
                turn.opening = asyncio.get_running_loop().create_task(_store_opening(turn, writes))
                return turn.started
        except BaseException as exc:
            _opened(turn, exc)
            raise
        _opened(turn, None)
        return turn.started
    started, agent_row, history = await sync_to_async(turn_prepare)(
        **args, conversation_id=conversation_id, on_disconnect=on_disconnect
    )
    _spawn(_make_turn(**{**args, "agent": agent_row}, started=started, history=history))
    return started


async def _store_opening(turn: _Turn, writes: dict[str, Any]) -> None:
    """Write the rows of a turn that opened a conversation on the server's loop, together with
    those of concurrent openings (``core.loop_writer``), once the run's first event is out
    (``agents.llm.after_first_event``): building and compiling the statement takes the loop for a
    millisecond or two per turn, which no turn's first token should wait for (at a burst of
    openings, chat's first delta then follows the upstream's as soon as /v1 raw's does).
    Then the hub writes the turn's log; if they fail, the turn is abandoned."""
    try:
        await after_first_event(turn.first_event, turn.task)
        await _loop_openings.write(_opening_rows(turn, writes))
    except BaseException as exc:
        _opened(turn, exc)
        if isinstance(exc, asyncio.CancelledError):
            raise
        logger.error("chat turn %s: its rows could not be written: %r", turn.message_id, exc)
        return
    _opened(turn, None)


def start_turn(
    *,
    org,
    user,
    agent: Any,
    message: str,
    conversation_id: Any = None,
    channel: str,
    on_disconnect: str = "continue",
) -> TurnStarted:
    """:func:`astart_turn` for a sync view: the writes run on the view's own thread and the run
    is handed to the server's loop, with no round trip through the loop in between."""
    args = {"org": org, "user": user, "agent": agent, "message": message, "channel": channel}
    opening = _opening_turn(**args, conversation_id=conversation_id, on_disconnect=on_disconnect)
    if opening is not None:
        turn, writes = opening
        _spawn(turn, stored=False)
        try:
            if server_loop_of_this_thread() is not None:  # a view thread under an ASGI server
                _openings.write(_opening_rows(turn, writes))
            else:  # a test, a Celery task: this thread's connection (and transaction)
                _write_opening_rows(_opening_rows(turn, writes))
        except BaseException as exc:
            _opened(turn, exc)
            raise
        _opened(turn, None)
        return turn.started
    started, agent_row, history = turn_prepare(
        **args, conversation_id=conversation_id, on_disconnect=on_disconnect
    )
    _spawn(_make_turn(**{**args, "agent": agent_row}, started=started, history=history))
    return started


# --- the detached run --------------------------------------------------------------------------

_running: dict[str, _Turn] = {}
_hubs: dict[asyncio.AbstractEventLoop, _Hub] = {}
_background: asyncio.AbstractEventLoop | None = None
_background_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """A long-lived loop of this process for turns started where no server loop runs."""
    global _background
    with _background_lock:
        if _background is None or _background.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="chat-turns", daemon=True).start()
            _background = loop
        return _background


def _start_on(loop: asyncio.AbstractEventLoop, turn: _Turn, stored: bool) -> None:
    """On ``loop``: give the turn the loop's hub (which writes its log once its messages are
    ``stored``) and start it in a fresh context (it must not inherit the request's thread-sensitive
    executor, which ends with the request)."""
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = _Hub(loop)
    turn.hub = hub
    if stored:
        hub.add(turn)
    turn.task = loop.create_task(turn.run(), context=contextvars.Context())


def _call_on_loop(turn: _Turn, fn) -> None:
    """``fn()`` on the turn's loop: now when that is the running loop, else as its next callback."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is turn.loop:
        fn()
    else:
        turn.loop.call_soon_threadsafe(fn)


def _spawn(turn: _Turn, *, stored: bool = True) -> None:
    """Run ``turn`` on the server's loop, or where there is none (a test, a Celery task) on the
    process's background loop; ``stored=False`` when its messages are still being written."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    _running[str(turn.message_id)] = turn
    if loop is not None and not on_short_lived_loop():
        turn.loop = loop
        _start_on(loop, turn, stored)
        return
    server = server_loop_of_this_thread() if loop is None else None
    if server is not None:  # a sync view's thread under an ASGI server
        turn.loop = server
        server.call_soon_threadsafe(_start_on, server, turn, stored, context=contextvars.Context())
        return
    background = _background_loop()
    turn.loop = background
    background.call_soon_threadsafe(_start_on, background, turn, stored, context=contextvars.Context())


def _parse_arguments(raw: Any) -> Any:
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            return raw
    return raw


def _citations_of(result: Any) -> list[dict[str, Any]]:
    """Citations a tool result carries (``{"citations": [{document_id, chunk_id, score}, …]}``)."""
    if not isinstance(result, dict) or not isinstance(result.get("citations"), list):
        return []
    citations = []
    for item in result["citations"]:
        if not isinstance(item, dict):
            continue
        score = item.get("score")
        try:
            score = float(score) if score is not None else None
        except (TypeError, ValueError):
            score = None
        citations.append(
            {
                "document_id": str(item["document_id"]) if item.get("document_id") is not None else None,
                "chunk_id": str(item["chunk_id"]) if item.get("chunk_id") is not None else None,
                "score": score,
            }
        )
    return citations


def turn_log_write(
    *, events: list[tuple[Any, int, str, dict]], updates: list[tuple[Any, dict[str, Any]]]
) -> set[str]:
    """One batch of the log writer, in one transaction: the events of every running turn of the
    process, and the progress (or the outcome) of some of their messages. Returns the ids of the
    messages that are gone (their conversation was deleted); their events are dropped."""
    ids = {str(message_id) for message_id, *_rest in events} | {str(message_id) for message_id, _ in updates}
    with transaction.atomic():
        if settings.CHAT_ASYNC_COMMIT:
            commit_without_flush_wait()
        alive = {str(pk) for pk in Message.objects.filter(pk__in=ids).values_list("pk", flat=True)}
        now = timezone.now()
        finished = []
        progress = []
        for message_id, fields in updates:
            if str(message_id) not in alive:
                continue
            if fields.keys() == _PROGRESS_FIELDS:
                progress.append((message_id, fields))
                continue
            Message.objects.filter(pk=message_id).update(**fields, updated_at=now)
            if fields.get("status", Message.Status.STREAMING) != Message.Status.STREAMING:
                finished.append(message_id)
        _progress_update(progress, now=now)
        if finished:  # their conversations, in one statement
            Conversation.objects.filter(messages__pk__in=finished).update(updated_at=now, last_message_at=now)
        _events_insert([event for event in events if str(event[0]) in alive], now=now)
    return ids - alive


_PROGRESS_FIELDS = {"content", "parts", "citations", "last_seq"}


def _columns(model, *names: str) -> dict[str, Any]:
    """The quoted table (``table``) and columns (by field name) of ``model``, for psycopg's SQL."""
    from psycopg import sql

    quoted = {name: sql.Identifier(model._meta.get_field(name).column) for name in names}
    return {"table": sql.Identifier(model._meta.db_table), **quoted}


@functools.cache
def _progress_statement():
    from psycopg import sql

    return sql.SQL(
        "UPDATE {table} SET {content} = r.c, {parts} = r.p, {citations} = r.ci, {last_seq} = r.s, "
        "{updated_at} = %s FROM unnest(%s::uuid[], %s::text[], %s::jsonb[], %s::jsonb[], %s::int[]) "
        "AS r(id, c, p, ci, s) WHERE {table}.{id} = r.id"
    ).format(**_columns(Message, "id", *_PROGRESS_FIELDS, "updated_at"))


@functools.cache
def _events_statement():
    from psycopg import sql

    return sql.SQL(
        "INSERT INTO {table} ({message}, {seq}, {event}, {data}, {created_at}) SELECT m, s, e, d, %s "
        "FROM unnest(%s::uuid[], %s::int[], %s::text[], %s::jsonb[]) AS r(m, s, e, d)"
    ).format(**_columns(MessageEvent, "message", "seq", "event", "data", "created_at"))


def _progress_update(progress: list[tuple[Any, dict[str, Any]]], *, now) -> None:
    """Save the text so far of streaming messages (``_PROGRESS_FIELDS``): on PostgreSQL one
    ``UPDATE … FROM unnest(…)`` for all of them (at 200 streams, two hundred UPDATEs a second
    otherwise), elsewhere one each."""
    if not progress:
        return
    connection = connections[Message.objects.db]
    if connection.vendor != "postgresql":
        for message_id, fields in progress:
            Message.objects.filter(pk=message_id).update(**fields, updated_at=now)
        return
    from psycopg.types.json import Jsonb

    with server_binding_cursor(connection) as cursor:
        cursor.execute(
            _progress_statement(),
            [
                now,
                [message_id for message_id, _ in progress],
                [fields["content"] for _, fields in progress],
                [Jsonb(fields["parts"]) for _, fields in progress],
                [Jsonb(fields["citations"]) for _, fields in progress],
                [fields["last_seq"] for _, fields in progress],
            ],
        )


def _events_insert(events: list[tuple[Any, int, str, dict]], *, now) -> None:
    """Insert the log's new events. On PostgreSQL one ``INSERT … SELECT FROM unnest(…)`` with an
    array per column, whatever the number of events: at 200 streams, building a ``MessageEvent``
    and compiling its values for each event was a third of the log writer's time. Elsewhere
    ``bulk_create``."""
    if not events:
        return
    connection = connections[MessageEvent.objects.db]
    if connection.vendor != "postgresql":
        MessageEvent.objects.bulk_create(
            [MessageEvent(message_id=m, seq=seq, event=name, data=data) for m, seq, name, data in events]
        )
        return
    from psycopg.types.json import Jsonb

    ids, seqs, names, datas = zip(*events, strict=True)
    with server_binding_cursor(connection) as cursor:
        cursor.execute(
            _events_statement(),
            [now, list(ids), list(seqs), list(names), [Jsonb(data) for data in datas]],
        )


def turn_cancel_flags(*, message_ids: list[Any]) -> set[str]:
    """Which of these running turns were asked to stop (or are gone)."""
    rows = dict(
        Message.objects.filter(pk__in=message_ids).values_list("pk", "cancel_requested_at").iterator()
    )
    return {str(pk) for pk in message_ids if pk not in rows or rows[pk] is not None}


def _run_row(run_id: Any):
    from agents.models import AgentRun

    return AgentRun.objects.filter(pk=run_id).first() if run_id else None


_db_write = database_sync_to_async(turn_log_write, thread_sensitive=False)
_db_cancel_flags = database_sync_to_async(turn_cancel_flags, thread_sensitive=False)
_db_run_row = database_sync_to_async(_run_row, thread_sensitive=False)
_db_cost_micros = database_sync_to_async(estimate_cost_micros, thread_sensitive=False)
MICROS_PER_USD = Decimal(1_000_000)
CONTROL_GROUP = "chat.turns.control"
TURN_DB_THREADS = 4
PUSH_CONCURRENCY = 16
FOLLOW_ANNOUNCE_SECONDS = 1.0


class _ClosingExecutor(ThreadPoolExecutor):
    """Threads for the turns' database calls that give their connection back after each call, so
    that a turn streaming for a minute holds no connection (of a pool of ten) meanwhile."""

    def submit(self, fn, /, *args, **kwargs):
        def call():
            try:
                return fn(*args, **kwargs)
            finally:
                connections.close_all()

        return super().submit(call)


_executor: _ClosingExecutor | None = None


def _turn_executor() -> _ClosingExecutor:
    global _executor
    if _executor is None:
        _executor = _ClosingExecutor(max_workers=TURN_DB_THREADS, thread_name_prefix="chat-turn-db")
    return _executor


class _Hub:
    """Per event loop: the turns running on it, one log writer and one cancel watcher for all of
    them (a write and a flag query per interval for the whole process, not per turn)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.turns: dict[str, _Turn] = {}
        self.wake = asyncio.Event()
        self.busy = asyncio.Event()
        self.writer = loop.create_task(self._write_forever(), context=contextvars.Context())
        self.watcher: asyncio.Task | None = None
        self.failures = 0

    def add(self, turn: _Turn) -> None:
        self.turns[str(turn.message_id)] = turn
        self.busy.set()
        if self.watcher is None or self.watcher.done():
            # Listens while turns run, and ``WATCH_IDLE_SECONDS`` after: an idle loop holds no
            # subscription.
            self.watcher = self.loop.create_task(self._watch(), context=contextvars.Context())

    async def _write_forever(self) -> None:
        while True:
            if not self.turns:
                self.busy.clear()
                await self.busy.wait()
            try:
                await asyncio.wait_for(self.wake.wait(), FLUSH_SECONDS)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                await self.write_once(isolate=self.failures >= 2)
                self.failures = 0
            except Exception:  # the next round retries; a turn never dies of a failed write
                self.failures += 1
                logger.exception("chat turns: writing the event log failed")
                await asyncio.sleep(FLUSH_SECONDS)

    async def write_once(self, *, isolate: bool = False) -> None:
        """One batch for all turns; with ``isolate`` (after failed batches) one per turn, and a
        turn whose own batch still fails loses those events rather than blocking every turn."""
        if isolate:
            for turn in list(self.turns.values()):
                try:
                    await self._write(self.turns, only=turn)
                except Exception:
                    logger.exception(
                        "chat turn %s: its events could not be written; dropped", turn.message_id
                    )
                    turn.pending = []
                    if turn.final is not None:
                        self.turns.pop(str(turn.message_id), None)
                        if not turn.written.done():
                            turn.written.set_result(None)
            return
        await self._write(self.turns)

    async def _write(self, turns: dict[str, _Turn], only: _Turn | None = None) -> None:
        now = self.loop.time()
        events: list[tuple[Any, int, str, dict]] = []
        updates: list[tuple[Any, dict[str, Any]]] = []
        taken: list[tuple[_Turn, list[tuple[int, str, dict]]]] = []
        finals: list[_Turn] = []
        for turn in [only] if only is not None else list(turns.values()):
            pending, turn.pending = turn.pending, []
            taken.append((turn, pending))
            events.extend((turn.message_id, seq, name, data) for seq, name, data in pending)
            if turn.final is not None:
                updates.append((turn.message_id, {**turn.state(), **turn.final, "last_seq": turn.seq}))
                finals.append(turn)
            elif pending and now - turn.progress_at >= PROGRESS_SECONDS:
                updates.append((turn.message_id, {**turn.state(), "last_seq": pending[-1][0]}))
                turn.progress_at = now
        if not events and not updates:
            return
        try:
            gone = await _db_write(events=events, updates=updates)
        except BaseException:
            for turn, pending in taken:  # back in front, in order, for the next round
                turn.pending = pending + turn.pending
            raise
        await self._push([(turn, pending) for turn, pending in taken if pending and turn.watched])
        for turn in finals:
            self.turns.pop(str(turn.message_id), None)
            if not turn.written.done():
                turn.written.set_result(None)
        for message_id in gone:
            turn = self.turns.get(message_id)
            if turn is not None:
                turn.request_cancel("gone")

    async def _push(self, batches: list[tuple[_Turn, list[tuple[int, str, dict]]]]) -> None:
        """Publish what was just written to the followers in other processes (a few at a time:
        the channel layer's connections are a pool too)."""
        limit = asyncio.Semaphore(PUSH_CONCURRENCY)

        async def push(turn: _Turn, pending: list[tuple[int, str, dict]]) -> None:
            async with limit:
                await realtime.apublish(turn_group(turn.message_id), {"events": pending})

        await asyncio.gather(*(push(turn, pending) for turn, pending in batches))

    async def _watch(self) -> None:
        while self.turns:  # re-checked after the subscription closes: a turn may have come meanwhile
            async with realtime.Subscription(CONTROL_GROUP, dedicated=True) as control:
                checked_at = 0.0
                idle_since: float | None = None
                while True:
                    # It stays subscribed for a while after the last turn: a process whose turns
                    # come one after another does not subscribe again at the start of each.
                    if self.turns:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = self.loop.time()
                    elif self.loop.time() - idle_since >= WATCH_IDLE_SECONDS:
                        break
                    pushed = await control.next(CANCEL_POLL_SECONDS)
                    if pushed is not None and pushed.get("follow"):
                        turn = self.turns.get(str(pushed["follow"]))
                        if turn is not None:
                            turn.watched = True
                    elif pushed is not None:
                        turn = self.turns.get(str(pushed.get("message_id")))
                        if turn is not None:
                            turn.request_cancel("cancelled")
                    running = [t.message_id for t in self.turns.values() if t.final is None]
                    if not running or self.loop.time() - checked_at < CANCEL_POLL_SECONDS:
                        continue
                    checked_at = self.loop.time()
                    try:
                        flagged = await _db_cancel_flags(message_ids=running)
                    except Exception:
                        logger.warning("chat turns: reading cancel flags failed", exc_info=True)
                        continue
                    for message_id in flagged:
                        turn = self.turns.get(message_id)
                        if turn is not None:
                            turn.request_cancel("cancelled")


class _LoopFuture:
    """A future on the loop that first asks for it, kept in the instance's ``_<name>``: a turn is
    made where no loop may be running (a sync view's thread) and waited on on the server's."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = f"_{name}"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        future = getattr(instance, self.attr)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            setattr(instance, self.attr, future)
        return future


class _Turn:
    """One running turn in this process: turns the runtime's events into turn events, keeps the
    message's state; its hub writes the log."""

    written = _LoopFuture()  # done once the hub has written the turn's outcome
    stored = _LoopFuture()  # done once the turn's rows (and its run's, ``run_row``) are committed
    request_sent = _LoopFuture()  # done once the run's first model call has sent its request
    # Done once the run's first event (a delta, the end of a model step) was handled, or the turn
    # ends without one.
    first_event = _LoopFuture()

    def __init__(
        self,
        *,
        started: TurnStarted,
        org,
        user,
        agent: Agent,
        message: str,
        history: list[dict[str, Any]],
        channel: str,
        request_id: str | None,
        api_key_id: Any,
    ) -> None:
        self.started = started
        self.message_id = started.message_id
        self.org = org
        self.user = user
        self.agent = agent
        self.message = message
        self.history = history
        self.channel = channel
        self.request_id = request_id
        self.api_key_id = api_key_id
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: _Hub | None = None
        self.task: asyncio.Task | None = None
        self.run_task: asyncio.Task | None = None
        self.seq = 1  # message.start was written with the messages
        self.pending: list[tuple[int, str, dict]] = []
        self.text: list[str] = []
        self.parts: list[dict[str, Any]] = []
        self.citations: list[dict[str, Any]] = []
        self.progress_at = 0.0
        self.watched = False  # a follower in another process asked for pushes
        self.final: dict[str, Any] | None = None
        self._written: asyncio.Future | None = None
        self._stored: asyncio.Future | None = None
        self._request_sent: asyncio.Future | None = None
        self._first_event: asyncio.Future | None = None
        self.opening: asyncio.Task | None = None  # writes its rows (``_store_opening``)
        self.run_id: str | None = None
        # The run written with the turn's rows (``_opening_turn``): its id, its maker, the row.
        self.run_pk: Any = None
        self.make_run: Any = None
        self.run_row = None
        self.cancel_reason: str | None = None
        self.abandoned = False  # its messages could not be written: the run is called off
        # Every event so far, for followers on the same loop (no database, no channel layer).
        self.events: list[TurnEvent] = [TurnEvent(seq=1, event="message.start", data=_start_event(started))]
        self.signal = asyncio.Event()

    # -- events ---------------------------------------------------------------------------------

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        self.seq += 1
        self.pending.append((self.seq, event, data))
        self._announce(TurnEvent(seq=self.seq, event=event, data=data))

    def _announce(self, event: TurnEvent) -> None:
        """Wake the followers on this loop (they read ``events``); followers in other processes
        get the events from the hub, in batches, once they are in the log."""
        self.events.append(event)
        signal, self.signal = self.signal, asyncio.Event()
        signal.set()

    async def on_run_event(self, event: dict[str, Any]) -> None:
        """The runtime's events, as turn events (and as the message's parts)."""
        try:
            await self._on_run_event(event)
        finally:
            if not self.first_event.done():  # after the event is handed to the followers
                self.first_event.set_result(None)

    async def _on_run_event(self, event: dict[str, Any]) -> None:
        if event.get("run_id"):
            self.run_id = event["run_id"]
        kind = event.get("type")
        if kind == "delta":
            text = event.get("text") or ""
            if not text:
                return
            self.text.append(text)
            if self.parts and self.parts[-1].get("type") == "text":
                self.parts[-1]["text"] += text
            else:
                self.parts.append({"type": "text", "text": text})
            await self.emit("message.delta", {"text": text})
        elif kind == "tool_call":
            call = event.get("call") or {}
            data = {
                "id": call.get("id", ""),
                "name": call.get("name", ""),
                "arguments": _parse_arguments(call.get("arguments")),
            }
            self.parts.append({"type": "tool_call", **data})
            await self.emit("tool.call", data)
        elif kind == "tool_result":
            step = event.get("step") or {}
            data = {"id": step.get("id", "")}
            if "error" in step:
                data["error"] = step["error"]
            else:
                data["output"] = step.get("result")
            self.parts.append({"type": "tool_result", "name": step.get("name", ""), **data})
            await self.emit("tool.result", data)
            for citation in _citations_of(event.get("result", step.get("result"))):
                self.citations.append(citation)
                await self.emit("citation", citation)

    def state(self) -> dict[str, Any]:
        """The message as it stands (a copy: the writer saves it from another thread)."""
        return {
            "content": "".join(self.text),
            "parts": [dict(part) for part in self.parts],
            "citations": list(self.citations),
        }

    async def finish(self, event: str, data: dict[str, Any], fields: dict[str, Any]) -> None:
        """The terminal event and the outcome: the hub writes them with the last events, and only
        then is the event published, so a client that sees it finds the message stored."""
        if not self.first_event.done():  # a turn that ends before any event: its rows may go now
            self.first_event.set_result(None)
        self.seq += 1
        self.pending.append((self.seq, event, data))
        self.final = fields
        if self.hub is not None:
            written = self.written
            self.hub.wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(written), FINAL_WRITE_TIMEOUT)
            except TimeoutError:
                logger.error("chat turn %s: its outcome was not written in time", self.message_id)
        if self.abandoned:
            return  # its followers were given the turn's ``error`` already
        self._announce(TurnEvent(seq=self.seq, event=event, data=data))

    async def _run_stored(self):
        """The run's row, once the turn's rows (its own among them) are committed."""
        await self.stored
        return self.run_row

    def mark_stored(self) -> None:
        """Its messages are committed: the hub may write its log (on the turn's loop)."""
        if not self.stored.done():
            self.stored.set_result(None)
        if self.hub is not None and not self.abandoned:
            self.hub.add(self)

    def abandon(self) -> None:
        """Its messages could not be written: stop the run, write and publish nothing but an
        ``error`` event for the followers on this loop (on the turn's loop). The run's row, which
        was to be written with them, is not there either; the model call still records its usage."""
        self.abandoned = True
        if self.events[-1].event not in TERMINAL_EVENTS:  # followers that were given its ids end
            self.seq += 1
            data = {"code": "ERR_INTERNAL", "message": "The turn could not be stored."}
            self._announce(TurnEvent(seq=self.seq, event="error", data=data))
        if not self.stored.done():
            self.stored.set_exception(RuntimeError("The turn's rows could not be written."))
            self.stored.exception()  # its awaiter (the run) may be gone already: nothing to log
        self.request_cancel("abandoned")
        if self._written is not None and not self._written.done():
            self._written.set_result(None)  # nothing will be written: do not wait for it

    # -- cancel ---------------------------------------------------------------------------------

    def request_cancel(self, reason: str = "cancelled") -> None:
        """Stop the run (call on the turn's loop; other threads use ``loop.call_soon_threadsafe``)."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.run_task is not None and not self.run_task.done():
            self.run_task.cancel()

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            # The run's thread-sensitive database work goes to a small pool shared by all turns
            # (not the process's single thread, not a thread and a held connection per turn).
            async with ThreadSensitiveContext(executor=_turn_executor()):
                await self._run()
        finally:
            _running.pop(str(self.message_id), None)
            if self.hub is not None and self.final is None:
                self.hub.turns.pop(str(self.message_id), None)

    async def _run(self) -> None:
        from agents.runtime.loop import arun_agent

        with request_context.channel_scope(self.channel, request_id=self.request_id):
            request_context.note_api_key(self.api_key_id)
            with request_sent_signal(self.request_sent):  # the run's task sees it: its model call sets it
                self.run_task = asyncio.create_task(
                    arun_agent(
                        agent=self.agent,
                        message=self.message,
                        user=self.user,
                        conversation_id=self.started.conversation_id,
                        trigger="chat",
                        history=self.history,
                        on_event=self.on_run_event,
                        stream=True,
                        run_id=self.run_pk,
                        run_written=self._run_stored() if self.run_pk is not None else None,
                    )
                )
            if self.cancel_reason is not None:  # cancelled before the task existed
                self.run_task.cancel()
            try:
                run = await self.run_task
            except asyncio.CancelledError:
                if self.abandoned:
                    return
                await asyncio.shield(self._finish_cancelled())
                if self.cancel_reason is None:
                    raise  # the turn itself was cancelled (the server stops)
            except ApplicationError as exc:
                await self._finish_failed(exc.code, exc.message)
            except Exception as exc:
                if self.abandoned:
                    return  # its rows (and its run's) were never written: nothing to finish
                logger.exception("chat turn %s failed", self.message_id)
                await self._finish_failed("ERR_INTERNAL", f"The turn failed: {type(exc).__name__}.")
            else:
                await self._finish_ok(run)

    async def _usage(self, prompt_tokens: int, completion_tokens: int, model: str) -> Decimal:
        """Emit the turn's ``usage`` event, priced by whatever the platform registered (billing's
        catalogue and the org's overrides); an unknown price shows as 0."""
        micros = await _db_cost_micros(
            org_id=self.org.pk,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        cost = (Decimal(micros or 0) / MICROS_PER_USD).quantize(Decimal("0.000001"))
        await self.emit(
            "usage",
            {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "cost_usd": float(cost)},
        )
        return cost

    async def _finish_ok(self, run) -> None:
        if not self.text and run.output:  # e.g. the max_tool_iterations notice, never streamed
            await self.on_run_event({"type": "delta", "text": run.output})
        model = (run.model or self.agent.model or "")[:200]
        cost = await self._usage(run.prompt_tokens, run.completion_tokens, model)
        await self.finish(
            "message.end",
            {"finish_reason": run.finish_reason or "stop"},
            {
                "status": Message.Status.COMPLETE,
                "finish_reason": (run.finish_reason or "stop")[:32],
                "prompt_tokens": run.prompt_tokens,
                "completion_tokens": run.completion_tokens,
                "cost_usd": cost,
                "model": (run.model or self.agent.model or "")[:200],
                "run_id": run.pk,
            },
        )

    async def _finish_cancelled(self) -> None:
        run = await _db_run_row(self.run_id)
        prompt = run.prompt_tokens if run is not None else 0
        completion = run.completion_tokens if run is not None else 0
        estimated = False
        text = "".join(self.text)
        if text and completion == 0:  # the cut-off step never reported its usage to the run
            completion, estimated = (len(text) + 3) // 4, True
        model = ((run.model if run is not None else "") or self.agent.model or "")[:200]
        cost = await self._usage(prompt, completion, model)
        final: dict[str, Any] = {
            "status": Message.Status.CANCELLED,
            "finish_reason": "cancelled",
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost,
            "usage_estimated": estimated,
            "cancel_requested_at": timezone.now(),
        }
        if run is not None:
            final["run_id"] = run.pk
            final["model"] = (run.model or self.agent.model or "")[:200]
        await self.finish("message.end", {"finish_reason": "cancelled"}, final)

    async def _finish_failed(self, code: str, message: str) -> None:
        final: dict[str, Any] = {
            "status": Message.Status.FAILED,
            "finish_reason": "error",
            "error": {"code": code, "message": message},
        }
        run = await _db_run_row(self.run_id)
        if run is not None:
            final.update(
                run_id=run.pk, prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens
            )
        await self.finish("error", {"code": code, "message": message}, final)


# --- following a turn --------------------------------------------------------------------------


async def _follow_local(
    turn: _Turn, after_seq: int, heartbeat: float | None
) -> AsyncIterator[TurnEvent | None]:
    """Follow a turn that runs on this loop straight from its memory."""
    index = max(0, int(after_seq))
    while True:
        while index < len(turn.events):
            event = turn.events[index]
            index += 1
            yield event
            if event.event in TERMINAL_EVENTS:
                return
        signal = turn.signal
        try:
            # A timeout scope, not wait_for: this runs once per event of every stream, and wait_for
            # wraps the wait in a task of its own (about 30 us more of the loop's time each).
            async with asyncio.timeout(heartbeat or FINAL_WRITE_TIMEOUT):
                await signal.wait()
        except TimeoutError:
            if turn.task is not None and turn.task.done() and index >= len(turn.events):
                return  # pragma: no cover - a turn always ends with a terminal event
            if heartbeat:
                yield None


async def follow_turn(
    *, message_id: Any, after_seq: int = 0, heartbeat: float | None = None
) -> AsyncIterator[TurnEvent | None]:
    """The turn's events after ``after_seq``, in order, replayed from the log then live; ends after
    the terminal event. With ``heartbeat``, yields None after that many idle seconds (keep-alives).

    A turn running on this very loop is followed from its memory; any other (another process, a
    finished turn) from the log and the channel layer."""
    loop = asyncio.get_running_loop()
    turn = _running.get(str(message_id))
    if turn is not None and turn.loop is loop:
        async for event in _follow_local(turn, after_seq, heartbeat):
            yield event
        return
    expected = max(0, int(after_seq)) + 1
    held: dict[int, TurnEvent] = {}
    need_log, read_at, idle, last_seq = True, 0.0, 0.0, 0
    status: str | None = Message.Status.STREAMING
    # Ask the process running the turn for pushes (until the first one comes: it may not have been
    # listening yet); without a layer that crosses processes, the log is polled instead.
    announce = realtime.pushes_across_processes()
    announced_at = -FOLLOW_ANNOUNCE_SECONDS
    async with realtime.Subscription(turn_group(message_id)) as subscription:
        while True:
            if announce and status == Message.Status.STREAMING:
                if loop.time() - announced_at >= FOLLOW_ANNOUNCE_SECONDS:
                    announced_at = loop.time()
                    await realtime.apublish(CONTROL_GROUP, {"follow": str(message_id)})
            if need_log and (not held or loop.time() - read_at >= GAP_RETRY_SECONDS):
                rows, status, last_seq = await _db_read_log(message_id=message_id, after_seq=expected - 1)
                read_at, need_log = loop.time(), False
                if status is None:
                    return  # the message (its conversation) was deleted
                for seq, name, data in rows:
                    held.setdefault(seq, TurnEvent(seq=seq, event=name, data=data))
            while expected in held:
                event = held.pop(expected)
                expected += 1
                idle = 0.0
                yield event
                if event.event in TERMINAL_EVENTS:
                    return
            for stale in [seq for seq in held if seq < expected]:
                del held[stale]
            if status != Message.Status.STREAMING and not held and not need_log:
                if expected > last_seq:
                    return  # the caller has seen everything already (it resumed after the end)
                # Finalised but the log holds no terminal event: the process running it died.
                yield TurnEvent(
                    seq=max(expected, last_seq + 1),
                    event="error",
                    data={"code": "ERR_TURN_LOST", "message": "The turn ended without finishing."},
                )
                return
            wait = GAP_RETRY_SECONDS if held else realtime.follow_interval()
            if announce:
                wait = min(wait, FOLLOW_ANNOUNCE_SECONDS)
            if heartbeat:
                wait = max(0.01, min(wait, heartbeat - idle))
            pushed = await subscription.next(wait)
            if pushed is None:
                idle += wait
                need_log = True  # a push may have been missed (another process, a full channel)
                if heartbeat and idle >= heartbeat:
                    idle = 0.0
                    yield None
                continue
            announce = False  # the turn's process pushes to us
            batch = pushed.get("events") if isinstance(pushed.get("events"), list) else [pushed]
            for item in batch:
                try:
                    if isinstance(item, dict):
                        seq, name, data = int(item.get("seq", 0)), item.get("event"), item.get("data")
                    else:
                        seq, name, data = int(item[0]), item[1], item[2]
                except (TypeError, ValueError, IndexError, KeyError):
                    continue
                if seq >= expected:
                    held.setdefault(seq, TurnEvent(seq=seq, event=str(name), data=data or {}))
            if held and min(held) > expected:
                need_log = True  # the log has the events in between


async def aturn_events(*, message_id: Any, after_seq: int = 0) -> AsyncIterator[TurnEvent]:
    """Follow a turn from any process (see the module doc); ends after ``message.end``/``error``.
    Callers check that the user may see the message (``chat.selectors.messages.turn_message_get``)."""
    async for event in follow_turn(message_id=message_id, after_seq=after_seq):
        if event is not None:
            yield event


# --- cancel ------------------------------------------------------------------------------------


def signal_local_cancel(message_id: Any, reason: str = "cancelled") -> bool:
    """Stop a turn running in this process; False when it runs elsewhere (or not at all)."""
    turn = _running.get(str(message_id))
    if turn is None or turn.loop is None:
        return False
    turn.loop.call_soon_threadsafe(turn.request_cancel, reason)
    return True


@transaction.atomic
def turn_cancel_request(*, org, user, message_id: Any) -> Message:
    """Mark a running turn of the caller's for cancellation; 404 for others, 409 when finished."""
    message = turn_message_get(org=org, user=user, message_id=message_id)
    if message.role != Message.Role.ASSISTANT:
        raise NotFoundError("Turn not found.")
    now = timezone.now()
    marked = Message.objects.filter(pk=message.pk, status=Message.Status.STREAMING).update(
        cancel_requested_at=now, updated_at=now
    )
    if not marked:
        raise ConflictError(
            "This turn has already finished.",
            code="ERR_TURN_FINISHED",
            details={
                "status": Message.objects.filter(pk=message.pk).values_list("status", flat=True).first()
            },
        )
    message.cancel_requested_at = now
    return message


async def acancel_turn(*, org, user, message_id: Any) -> None:
    """Cancel a running turn from any process (see the module doc)."""
    await sync_to_async(turn_cancel_request)(org=org, user=user, message_id=message_id)
    if not signal_local_cancel(message_id):
        await realtime.apublish(CONTROL_GROUP, {"message_id": str(message_id)})


def turn_cancel(*, org, user, message_id: Any, wait_seconds: float = 0.0) -> Message:
    """Sync flavour of :func:`acancel_turn` for views; waits up to ``wait_seconds`` for the turn to
    stop and returns the message as it then is."""
    turn_cancel_request(org=org, user=user, message_id=message_id)
    if not signal_local_cancel(message_id):
        realtime.publish(CONTROL_GROUP, {"message_id": str(message_id)})
    deadline = time.monotonic() + wait_seconds
    message = Message.objects.get(pk=message_id)
    while message.status == Message.Status.STREAMING and time.monotonic() < deadline:
        time.sleep(0.05)  # noqa: ASYNC251 - a sync view thread waiting for another process
        message.refresh_from_db()
    return message


# --- turns whose process died ------------------------------------------------------------------

STALE_TURN_SECONDS = 15 * 60


def turn_sweep_stale(*, older_than_seconds: int = STALE_TURN_SECONDS) -> int:
    """Close turns left ``streaming`` by a process that died (nothing written for a long while):
    an ``error`` event ``ERR_TURN_LOST`` ends their log and they become ``failed``, so followers
    stop waiting. The condition is re-checked under the row lock; returns how many were closed."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    closed = 0
    stale = Message.objects.filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)
    for message_id in stale.values_list("pk", flat=True)[:500]:
        if message_id in {turn.message_id for turn in _running.values()}:
            continue  # alive in this process
        with transaction.atomic():
            message = (
                Message.objects.select_for_update()
                .filter(pk=message_id, status=Message.Status.STREAMING, updated_at__lt=cutoff)
                .first()
            )
            if message is None:
                continue
            error = {"code": "ERR_TURN_LOST", "message": "The turn ended without finishing."}
            last = MessageEvent.objects.filter(message=message).order_by("-seq").values_list("seq", flat=True)
            seq = max(message.last_seq, last.first() or 0) + 1
            MessageEvent.objects.create(message=message, seq=seq, event="error", data=error)
            message.status = Message.Status.FAILED
            message.finish_reason = "error"
            message.error = error
            message.last_seq = seq
            message.save(update_fields=["status", "finish_reason", "error", "last_seq", "updated_at"])
            closed += 1
    return closed
