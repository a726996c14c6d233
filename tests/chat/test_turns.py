"""The turn service and POST /api/v1/chat in-process: input checks before anything starts, the
runtime's streaming option, citations from tool results, and following a turn from its log (gaps
in the live pushes are filled from the log, nothing is repeated)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from accounts.models import Role
from agents.models import Agent
from agents.runtime.loop import run_agent
from chat.models import Conversation, Message, MessageEvent
from chat.services import turns
from core import realtime
from tests.accounts.factories_orgs import client_with_role, personal_key
from tests.chat.conftest import make_agent, make_conversation, make_provider, parse_sse
from tests.core.test_errors import assert_envelope
from tests.polling import wait_for

CHAT = "/api/v1/chat"


# --- POST /api/v1/chat: refused before anything is written --------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body",
    [
        {"message": "hi"},
        {"agent": "{agent}"},
        {"agent": "{agent}", "message": ""},
        {"agent": "{agent}", "message": "hi", "on_disconnect": "explode"},
        {"agent": "{agent}", "message": "hi", "conversation_id": "nope"},
    ],
)
def test_a_bad_body_is_400_and_starts_nothing(org, member_client, body):
    agent = make_agent(org)
    body = {k: (v.format(agent=agent.key) if isinstance(v, str) else v) for k, v in body.items()}
    assert_envelope(member_client.post(CHAT, body, format="json"), 400)
    assert Message.objects.count() == 0 and Conversation.objects.count() == 0


@pytest.mark.django_db
def test_an_agent_or_conversation_you_cannot_see_is_404(org, other_org, owner, member, member_client):
    foreign = make_agent(other_org)
    private = make_agent(org, visibility=Agent.Visibility.PRIVATE, owner=owner)
    mine = make_agent(org)
    for ref in (foreign.key, str(foreign.pk), private.key, "nobody", str(uuid.uuid4())):
        assert_envelope(member_client.post(CHAT, {"agent": ref, "message": "hi"}, format="json"), 404)
    someone_elses = make_conversation(org, owner, mine)
    body = {"agent": mine.key, "message": "hi", "conversation_id": str(someone_elses.pk)}
    assert_envelope(member_client.post(CHAT, body, format="json"), 404)
    assert Message.objects.count() == 0


@pytest.mark.django_db
def test_viewers_anonymous_callers_and_keys_without_the_chat_scope_are_refused(org, member, anon_client):
    agent = make_agent(org)
    body = {"agent": agent.key, "message": "hi"}
    _viewer, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(viewer_client.post(CHAT, body, format="json"), 403, "ERR_ROLE_REQUIRED")
    assert anon_client.post(CHAT, body, format="json").status_code in (401, 403)
    _key, raw = personal_key(org, member, scopes=["conversations:write"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(client.post(CHAT, body, format="json"), 403, "ERR_SCOPE_REQUIRED")
    assert Message.objects.count() == 0


@pytest.mark.django_db
def test_cancel_of_a_finished_turn_is_409_and_of_a_user_message_404(org, member, member_client):
    conversation = make_conversation(org, member, messages=[("user", "hi"), ("assistant", "hello")])
    question, answer = conversation.messages.order_by("index")
    assert_envelope(member_client.post(f"{CHAT}/{answer.pk}/cancel"), 409, "ERR_TURN_FINISHED")
    assert_envelope(member_client.post(f"{CHAT}/{question.pk}/cancel"), 404)


@pytest.mark.django_db
def test_stream_rejects_a_bad_last_event_id(org, member, member_client):
    conversation = make_conversation(org, member, messages=[("user", "hi"), ("assistant", "hello")])
    answer = conversation.messages.get(index=1)
    assert_envelope(member_client.get(f"{CHAT}/{answer.pk}/stream?after=x"), 400)
    assert_envelope(member_client.get(f"{CHAT}/{answer.pk}/stream", HTTP_LAST_EVENT_ID="-3"), 400)


def body_of(response) -> str:
    """The whole body of a streaming (async) response of the test client."""

    async def read() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(read)().decode()


# --- the whole turn through the test client (the turn runs on the process's background loop) -----


@pytest.mark.django_db(transaction=True)
def test_a_turn_through_the_test_client_streams_and_continues_the_conversation(
    org, member, member_client, fake_upstream, allow_loopback
):
    agent = make_agent(org, make_provider(org, fake_upstream))
    response = member_client.post(CHAT, {"agent": agent.key, "message": "first"}, format="json")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/event-stream")
    events = parse_sse(body_of(response))
    assert events[0]["event"] == "message.start" and events[-1]["event"] == "message.end"
    assert "".join(e["data"]["text"] for e in events if e["event"] == "message.delta") == "echo: first"
    conversation = Conversation.objects.get()
    assert conversation.title == "first" and conversation.channel == "console"

    again = member_client.post(
        CHAT,
        {"agent": agent.key, "message": "second", "conversation_id": str(conversation.pk)},
        format="json",
    )
    events = parse_sse(body_of(again))
    assert events[-1]["event"] == "message.end"
    rows = list(
        Message.objects.filter(conversation=conversation).order_by("index").values_list("role", "content")
    )
    assert rows == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
        ("assistant", "echo: second"),
    ]
    conversation.refresh_from_db()
    assert conversation.message_count == 4


# --- the runtime's streaming option --------------------------------------------------------------


@pytest.mark.django_db
def test_arun_agent_stream_emits_deltas_and_still_records_the_run(org, member, fake_upstream, allow_loopback):
    agent = make_agent(org, make_provider(org, fake_upstream), model="tools-1", tools=["memory_save"])
    seen: list[dict] = []

    async def on_event(event):
        seen.append(event)

    run = run_agent(agent=agent, message="go", user=member, stream=True, on_event=on_event)
    kinds = [e["type"] for e in seen]
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("delta")
    assert "".join(e["text"] for e in seen if e["type"] == "delta") == run.output == "done after 1 tools"
    assert run.status == "succeeded" and run.prompt_tokens > 0
    assert all(e["run_id"] == str(run.pk) for e in seen)
    tool_result = next(e for e in seen if e["type"] == "tool_result")
    assert "result" in tool_result and tool_result["step"]["name"] == "memory_save"


# --- citations and following the log ---------------------------------------------------------------


def _turn_for(message_id) -> turns._Turn:
    started = turns.TurnStarted(
        conversation_id=uuid.uuid4(), user_message_id=uuid.uuid4(), message_id=message_id
    )
    return turns._Turn(
        started=started,
        org=None,
        user=None,
        agent=None,
        message="",
        history=[],
        channel="console",
        request_id=None,
        api_key_id=None,
    )


def test_a_tool_result_with_citations_emits_citation_events():
    turn = _turn_for(uuid.uuid4())
    result = {
        "items": [],
        "citations": [
            {"document_id": uuid.UUID(int=1), "chunk_id": 7, "score": "0.9", "text": "…"},
            {"document_id": "d2", "chunk_id": "c2", "score": None},
            "not a citation",
        ],
    }
    event = {"type": "tool_result", "step": {"id": "call_1", "name": "knowledge_search", "result": "clipped"}}
    async_to_sync(turn.on_run_event)({**event, "result": result, "run_id": "r"})
    names = [(name, data) for _seq, name, data in turn.pending]
    assert names == [
        ("tool.result", {"id": "call_1", "output": "clipped"}),
        ("citation", {"document_id": str(uuid.UUID(int=1)), "chunk_id": "7", "score": 0.9}),
        ("citation", {"document_id": "d2", "chunk_id": "c2", "score": None}),
    ]
    assert [seq for seq, _n, _d in turn.pending] == [2, 3, 4]
    assert len(turn.citations) == 2 and turn.parts[0]["type"] == "tool_result"


def _log(message, *events):
    MessageEvent.objects.bulk_create(
        [MessageEvent(message=message, seq=s, event=e, data=d) for s, e, d in events]
    )
    Message.objects.filter(pk=message.pk).update(last_seq=events[-1][0])


@pytest.mark.django_db(transaction=True)
def test_a_follower_fills_a_gap_in_the_live_pushes_from_the_log_without_repeats(org, member):
    conversation = make_conversation(org, member, messages=[("user", "hi")])
    message = Message.objects.create(
        org=org, conversation=conversation, index=1, role="assistant", status=Message.Status.STREAMING
    )
    _log(message, (1, "message.start", {"message_id": str(message.pk)}), (2, "message.delta", {"text": "a"}))
    group = turns.turn_group(message.pk)

    async def scenario():
        received = []

        async def follow():
            async for event in turns.aturn_events(message_id=message.pk):
                received.append(event.as_dict())

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0.3)  # it has replayed 1-2 and subscribed
        # seq 2 again (a repeat), then 4 arrives live before 3 (3's push was lost).
        await realtime.apublish(group, {"seq": 2, "event": "message.delta", "data": {"text": "a"}})
        await realtime.apublish(group, {"seq": 4, "event": "message.delta", "data": {"text": "c"}})
        await asyncio.sleep(0.2)
        assert [e["seq"] for e in received] == [1, 2]  # waits for 3, does not skip it
        from channels.db import database_sync_to_async

        await database_sync_to_async(_log)(
            message, (3, "message.delta", {"text": "b"}), (4, "message.delta", {"text": "c"})
        )
        await realtime.apublish(group, {"seq": 5, "event": "message.end", "data": {"finish_reason": "stop"}})
        await asyncio.sleep(0.1)
        await database_sync_to_async(_log)(message, (5, "message.end", {"finish_reason": "stop"}))
        await asyncio.wait_for(follower, 10)
        return received

    received = async_to_sync(scenario)()
    assert [e["seq"] for e in received] == [1, 2, 3, 4, 5]
    assert "".join(e["data"].get("text", "") for e in received) == "abc"
    assert received[-1]["event"] == "message.end"


@pytest.mark.django_db(transaction=True)
def test_a_finished_turn_replays_after_a_seq_and_ends(org, member):
    conversation = make_conversation(org, member, messages=[("user", "hi")])
    message = Message.objects.create(org=org, conversation=conversation, index=1, role="assistant")
    _log(
        message,
        (1, "message.start", {}),
        (2, "message.delta", {"text": "x"}),
        (3, "usage", {"prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.0}),
        (4, "message.end", {"finish_reason": "stop"}),
    )

    async def collect(after):
        return [e.seq async for e in turns.aturn_events(message_id=message.pk, after_seq=after)]

    assert async_to_sync(collect)(0) == [1, 2, 3, 4]
    assert async_to_sync(collect)(2) == [3, 4]
    assert async_to_sync(collect)(4) == []


@pytest.mark.django_db
def test_a_turn_left_streaming_by_a_dead_process_is_closed_with_an_error_event(org, member):
    from datetime import timedelta

    from django.utils import timezone

    from chat.tasks import sweep_stale_turns

    conversation = make_conversation(org, member, messages=[("user", "hi")])
    stale = Message.objects.create(
        org=org, conversation=conversation, index=1, role="assistant", status="streaming", last_seq=2
    )
    _log(stale, (1, "message.start", {}), (2, "message.delta", {"text": "par"}))
    fresh = Message.objects.create(
        org=org, conversation=conversation, index=2, role="assistant", status="streaming"
    )
    Message.objects.filter(pk=stale.pk).update(updated_at=timezone.now() - timedelta(hours=1))

    assert sweep_stale_turns() == 1
    stale.refresh_from_db()
    assert stale.status == "failed" and stale.error["code"] == "ERR_TURN_LOST" and stale.last_seq == 3
    assert list(MessageEvent.objects.filter(message=stale).values_list("seq", "event")) == [
        (1, "message.start"),
        (2, "message.delta"),
        (3, "error"),
    ]
    fresh.refresh_from_db()
    assert fresh.status == "streaming"


@pytest.mark.django_db(transaction=True)
def test_the_usage_event_and_the_message_carry_the_priced_cost(
    org, member, member_client, fake_upstream, allow_loopback
):
    from billing.selectors.state import cost_estimate_micros

    agent = make_agent(org, make_provider(org, fake_upstream), model="gpt-4o-mini")
    events = parse_sse(
        body_of(member_client.post(CHAT, {"agent": agent.key, "message": "hi"}, format="json"))
    )
    usage = next(e["data"] for e in events if e["event"] == "usage")
    expected = cost_estimate_micros(
        org_id=org.pk,
        model="gpt-4o-mini",
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
    )
    assert expected and usage["cost_usd"] == pytest.approx(expected / 1_000_000)
    answer = Message.objects.get(role="assistant")
    assert float(answer.cost_usd) == pytest.approx(expected / 1_000_000)


# --- a turn that opens a conversation starts its run before its rows are written ----------------


@pytest.mark.django_db(transaction=True)
def test_a_new_conversation_writes_its_run_with_its_rows_in_one_transaction(
    org, member, member_client, fake_upstream, allow_loopback, monkeypatch
):
    from agents.models import AgentRun
    from agents.runtime import loop

    agent = make_agent(org, make_provider(org, fake_upstream), model="gpt-4o-mini")
    written = []
    original = turns.turn_openings_write

    def recorded(openings):
        original(openings)
        written.extend(AgentRun.objects.filter(pk__in=[o.run.pk for o in openings]))

    async def no_separate_save(run):
        raise AssertionError("the runtime wrote the run apart")

    monkeypatch.setattr(turns, "turn_openings_write", recorded)
    monkeypatch.setattr(loop, "arun_save", no_separate_save)
    response = member_client.post(CHAT, {"agent": agent.key, "message": "hi"}, format="json")
    events = parse_sse(body_of(response))

    assert events[-1]["event"] == "message.end"
    conversation = Conversation.objects.get()
    assert [(r.trigger, r.conversation_id, r.status) for r in written] == [
        ("chat", conversation.pk, AgentRun.Status.RUNNING)  # committed with the conversation
    ]
    run = AgentRun.objects.get()
    assert run.pk == written[0].pk and run.status == AgentRun.Status.SUCCEEDED
    assert Message.objects.get(role="assistant").run_id == run.pk


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("entry", ["astart_turn", "start_turn"])
def test_a_new_conversation_whose_rows_cannot_be_written_calls_its_run_off(
    org, member, fake_upstream, allow_loopback, monkeypatch, entry
):
    from agents.models import AgentRun
    from billing.models import UsageRecord

    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="slow")
    agent.org = org
    key = f"Bearer {provider.api_key}"

    def broken_write(openings):
        # The run is already streaming from the upstream when the rows are written.
        wait_for(lambda: fake_upstream.stats["requests_by_key"][key], timeout=5)
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(turns, "turn_openings_write", broken_write)
    start = async_to_sync(turns.astart_turn) if entry == "astart_turn" else turns.start_turn
    with pytest.raises(RuntimeError, match="the audit table is gone"):
        start(org=org, user=member, agent=agent, message="hi", channel="api")

    assert fake_upstream.stats["requests_by_key"][key] == 1
    calls = UsageRecord.objects.filter(agent_id=agent.pk)
    # The fake notices the closed stream in its own thread, on its next write: wait for that too.
    wait_for(lambda: not turns._running and calls.exists() and fake_upstream.aborted_for(key), timeout=10)
    assert not turns._running  # the turn is gone
    assert fake_upstream.aborted_for(key) == 1  # the upstream stream was closed
    assert calls.count() == 1  # the call it made is metered all the same
    # Nothing of the turn was kept: the conversation's insert was rolled back with the rest, its
    # run's row too (it is written in the same transaction).
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert not MessageEvent.objects.exists() and not AgentRun.objects.filter(agent=agent).exists()


@pytest.mark.django_db
def test_the_log_writer_stores_events_and_outcomes_and_drops_those_of_deleted_messages(org, member):
    from django.utils import timezone

    kept = make_conversation(org, member, messages=[("user", "hi")])
    answer = Message.objects.create(org=org, conversation=kept, index=1, role="assistant", status="streaming")
    other = make_conversation(org, member, messages=[("user", "more")])
    streaming = Message.objects.create(
        org=org, conversation=other, index=1, role="assistant", status="streaming"
    )
    gone = make_conversation(org, member, messages=[("user", "bye")])
    lost = Message.objects.create(org=org, conversation=gone, index=1, role="assistant", status="streaming")
    lost_id = lost.pk
    gone.delete()
    before = timezone.now()
    tool_output = {"rows": [1, 2], "note": "quote ' and \" and \\ survive", "nested": {"ok": True}}
    parts = [{"type": "text", "text": "so far 'x'"}, {"type": "tool_call", "id": "t1", "arguments": {"q": 1}}]
    citations = [{"document_id": "d", "chunk_id": "c", "score": 0.5}]

    missing = turns.turn_log_write(
        events=[
            (answer.pk, 2, "message.delta", {"text": "hello"}),
            (answer.pk, 3, "tool.result", {"id": "t1", "output": tool_output}),
            (lost_id, 2, "message.delta", {"text": "lost"}),
            (answer.pk, 4, "message.end", {"finish_reason": "stop"}),
        ],
        updates=[
            (answer.pk, {"status": "complete", "content": "hello", "last_seq": 4}),
            (lost_id, {"content": "lost", "parts": [], "citations": [], "last_seq": 2}),
            (streaming.pk, {"content": "so far 'x'", "parts": parts, "citations": citations, "last_seq": 7}),
        ],
    )

    assert missing == {str(lost_id)}
    rows = list(MessageEvent.objects.filter(message=answer).order_by("seq"))
    assert [(e.seq, e.event, e.data) for e in rows] == [
        (2, "message.delta", {"text": "hello"}),
        (3, "tool.result", {"id": "t1", "output": tool_output}),
        (4, "message.end", {"finish_reason": "stop"}),
    ]
    assert all(e.created_at >= before for e in rows)
    assert not MessageEvent.objects.filter(message_id=lost_id).exists()
    answer.refresh_from_db()
    kept.refresh_from_db()
    assert (answer.status, answer.content, answer.last_seq) == ("complete", "hello", 4)
    assert kept.last_message_at is not None and kept.last_message_at >= before
    streaming.refresh_from_db()  # its progress: the text so far, still streaming
    assert (streaming.status, streaming.content, streaming.last_seq) == ("streaming", "so far 'x'", 7)
    assert (streaming.parts, streaming.citations) == (parts, citations)
    assert streaming.updated_at >= before
