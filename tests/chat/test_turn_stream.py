"""The streaming turn under real ASGI servers (Daphne in subprocesses) against the fake upstream:
event order, tool calls, failures as events, surviving a client that goes away, resuming from a
second process with ``Last-Event-ID``, and cancelling (on disconnect, or from the other process).

The two-process tests need PostgreSQL and Redis (the Redis channel layer is what carries events
and cancel requests across processes); the single-process ones also run on the embedded default.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import httpx
import pytest

from chat.models import Message, MessageEvent
from tests.chat.conftest import (
    api_key_for,
    make_agent,
    make_conversation,
    make_provider,
    parse_sse,
    post_event_stream,
    read_until_end,
)
from tests.polling import wait_for
from tests.support.asgi_server import run_asgi_server

pytestmark = pytest.mark.django_db(transaction=True)

ENV = {"OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost", "OPENAI_API_KEY": "", "SSE_KEEPALIVE_SECONDS": "2"}
LONG_MESSAGE = " ".join(f"word{i}" for i in range(40))


def assert_in_order(events, first_seq: int = 1):
    seqs = [int(e.id) for e in events]
    assert seqs == list(range(first_seq, first_seq + len(seqs))), seqs


def text_of(events) -> str:
    return "".join(e.data["text"] for e in events if e.event == "message.delta")


def _bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


def _message(events) -> Message:
    """The turn's assistant message. A turn that opens a conversation under a server answers
    before its rows are committed (``chat.services.turns.astart_turn``): the API's lookups wait
    for them, and so does this one, which reads the database directly."""
    message_id = events[0].data["message_id"]
    return wait_for(lambda: Message.objects.filter(pk=message_id).first(), what="the turn's rows")


# --- one process (embedded default or not) ---------------------------------------------------------


def test_a_turn_streams_start_deltas_usage_and_end_and_stores_the_answer(
    tmp_path, org, member, fake_upstream
):
    agent = make_agent(org, make_provider(org, fake_upstream))
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        with post_event_stream(
            f"{server.base_url}/api/v1/chat",
            body={"agent": agent.key, "message": "hello there"},
            headers=_bearer(raw),
        ) as stream:
            events = read_until_end(stream)
            stream.wait_closed()
        # The same turn replays from the log once it has finished, and the stream ends.
        message = _message(events)
        replay_url = f"{server.base_url}/api/v1/chat/{message.pk}/stream"
        with httpx.Client(timeout=10, headers=_bearer(raw)) as http:
            replay = http.get(replay_url, headers={"Last-Event-ID": "2"})
            again = http.get(f"{replay_url}?after=0")
            after_end = http.get(f"{replay_url}?after={events[-1].id}")
        log = server.log()

    names = [e.event for e in events]
    assert names[0] == "message.start" and names[-2:] == ["usage", "message.end"], (names, log)
    assert set(names[1:-2]) == {"message.delta"}
    assert_in_order(events)
    assert text_of(events) == "echo: hello there"
    assert events[0].data == {"conversation_id": str(message.conversation_id), "message_id": str(message.pk)}
    assert events[-1].data == {"finish_reason": "stop"}
    usage = events[-2].data
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0 and "cost_usd" in usage

    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE and message.content == "echo: hello there"
    assert message.parts == [{"type": "text", "text": "echo: hello there"}]
    assert message.run_id is not None and message.prompt_tokens == usage["prompt_tokens"]
    assert message.last_seq == len(events) == MessageEvent.objects.filter(message=message).count()
    question = message.conversation.messages.get(index=0)
    assert (question.role, question.content, message.index) == ("user", "hello there", 1)

    assert [int(e["id"]) for e in parse_sse(replay.text)] == list(range(3, len(events) + 1))
    assert [e["event"] for e in parse_sse(again.text)] == names
    assert after_end.status_code == 200 and parse_sse(after_end.text) == []


def test_turns_started_on_the_loop_open_and_continue_conversations_like_the_first(
    tmp_path, org, member, owner, fake_upstream
):
    """The first turns of a key run in the view's thread, until its lookup is cached (the very
    first read also learns the cache's generation); the next ones start on the server's loop
    (``chat.api.own_thread``): opening a conversation, continuing it. What they refuse (an agent
    or a conversation the caller may not see, a bad body) the thread answers as before, with
    nothing written."""
    agent = make_agent(org, make_provider(org, fake_upstream))
    raw = api_key_for(org, member)
    theirs = make_conversation(org, owner, agent, messages=[("user", "mine")])
    url = None

    def turn(server, body):
        with post_event_stream(url, body=body, headers=_bearer(raw)) as stream:
            return read_until_end(stream)

    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        url = f"{server.base_url}/api/v1/chat"
        turn(server, {"agent": agent.key, "message": "zero"})
        first = turn(server, {"agent": agent.key, "message": "one"})
        opened = turn(server, {"agent": agent.key, "message": "two"})
        conversation_id = opened[0].data["conversation_id"]
        continued = turn(server, {"agent": agent.key, "message": "three", "conversation_id": conversation_id})
        with httpx.Client(timeout=10, headers=_bearer(raw)) as http:
            unknown = http.post(url, json={"agent": "nobody", "message": "four"})
            foreign = http.post(
                url, json={"agent": agent.key, "message": "five", "conversation_id": str(theirs.pk)}
            )
            bad = http.post(url, json={"agent": agent.key, "message": ""})

    for events, text in ((first, "echo: one"), (opened, "echo: two"), (continued, "echo: three")):
        assert [e.event for e in events][0] == "message.start" and events[-1].event == "message.end"
        assert_in_order(events)
        assert text_of(events) == text
        assert _message(events).status == Message.Status.COMPLETE
    assert continued[0].data["conversation_id"] == conversation_id
    stored = Message.objects.filter(conversation_id=conversation_id).order_by("index")
    assert [(m.role, m.content) for m in stored] == [
        ("user", "two"), ("assistant", "echo: two"), ("user", "three"), ("assistant", "echo: three"),
    ]  # fmt: skip
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "ERR_NOT_FOUND")
    assert foreign.status_code == 404
    assert bad.status_code == 400
    assert theirs.messages.count() == 1
    assert Message.objects.filter(content__in=["four", "five", ""]).count() == 0


def test_turns_opening_at_once_each_store_their_conversation_messages_and_audit_row(
    tmp_path, org, member, fake_upstream
):
    """Under a server the openings of concurrent turns are written together (one transaction per
    batch): every turn still gets its own conversation, both messages, ``message.start`` and its
    audit row, with its request's details. The server's connection pool is smaller than the burst:
    a view waiting for the batch writer must not sit on a connection the writer needs."""
    from concurrent.futures import ThreadPoolExecutor

    from accounts.models import AuditLog
    from chat.models import Conversation

    agent = make_agent(org, make_provider(org, fake_upstream))
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env={**ENV, "DB_POOL_MAX_SIZE": "3"}) as server:

        def one(i: int):
            with post_event_stream(
                f"{server.base_url}/api/v1/chat",
                body={"agent": agent.key, "message": f"turn {i}"},
                headers={**_bearer(raw), "X-Request-ID": f"opening-{i}"},
            ) as stream:
                return read_until_end(stream)

        with ThreadPoolExecutor(12) as pool:
            runs = list(pool.map(one, range(12)))
        log = server.log()

    for i, events in enumerate(runs):
        assert [e.event for e in events][-1] == "message.end", (events, log)
        assert text_of(events) == f"echo: turn {i}"
        message = _message(events)
        conversation = Conversation.objects.get(pk=events[0].data["conversation_id"])
        assert conversation.message_count == 2 and conversation.title == f"turn {i}"
        assert [m.content for m in conversation.messages.order_by("index")] == [f"turn {i}", text_of(events)]
        assert MessageEvent.objects.filter(message=message, seq=1, event="message.start").exists()
        audit = AuditLog.objects.get(action="conversation.created", entity_id=str(conversation.pk))
        assert (audit.org_id, audit.actor_id, audit.request_id) == (org.pk, member.pk, f"opening-{i}")


def test_a_tool_turn_emits_tool_call_and_tool_result_and_continues_the_conversation(
    tmp_path, org, member, fake_upstream
):
    agent = make_agent(org, make_provider(org, fake_upstream), model="tools-1", tools=["memory_save"])
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        url = f"{server.base_url}/api/v1/chat"
        with post_event_stream(
            url, body={"agent": str(agent.pk), "message": "use a tool"}, headers=_bearer(raw)
        ) as s:
            events = read_until_end(s)
        conversation_id = events[0].data["conversation_id"]
        body = {"agent": agent.key, "message": "and again", "conversation_id": conversation_id}
        with post_event_stream(url, body=body, headers=_bearer(raw)) as s:
            second = read_until_end(s)
        log = server.log()

    names = [e.event for e in events]
    assert names[0] == "message.start" and names[-1] == "message.end", (names, log)
    call = next(e for e in events if e.event == "tool.call")
    result = next(e for e in events if e.event == "tool.result")
    assert names.index("tool.call") < names.index("tool.result")
    assert call.data["name"] == "memory_save" and call.data["arguments"] == {"step": 1} and call.data["id"]
    assert result.data["id"] == call.data["id"] and ("error" in result.data or "output" in result.data)
    assert text_of(events) == "done after 1 tools"
    assert_in_order(events)
    message = _message(events)
    assert [p["type"] for p in message.parts] == ["tool_call", "tool_result", "text"]

    assert second[0].data["conversation_id"] == conversation_id and second[-1].event == "message.end"
    assert Message.objects.filter(conversation_id=conversation_id).count() == 4
    assert _message(second).index == 3


def test_without_any_provider_the_turn_ends_with_an_error_event(tmp_path, org, member):
    agent = make_agent(org, None)
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        with post_event_stream(
            f"{server.base_url}/api/v1/chat", body={"agent": agent.key, "message": "hi"}, headers=_bearer(raw)
        ) as stream:
            events = read_until_end(stream)
            stream.wait_closed()
    assert [e.event for e in events] == ["message.start", "error"]
    assert events[-1].data["code"] == "ERR_NO_PROVIDER" and events[-1].data["message"]
    message = _message(events)
    assert message.status == Message.Status.FAILED and message.error["code"] == "ERR_NO_PROVIDER"


def test_a_client_that_goes_away_does_not_stop_the_turn(tmp_path, org, member, fake_upstream):
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        with post_event_stream(
            f"{server.base_url}/api/v1/chat",
            body={"agent": agent.key, "message": LONG_MESSAGE},
            headers=_bearer(raw),
        ) as stream:
            first = [stream.next_event() for _ in range(3)]
        message = _message(first)
        wait_for(lambda: Message.objects.get(pk=message.pk).status != "streaming", what="the turn to finish")
    message.refresh_from_db()
    assert message.status == Message.Status.COMPLETE
    assert message.content == f"echo: {LONG_MESSAGE}"


def test_on_disconnect_cancel_stops_the_turn_and_aborts_the_upstream(tmp_path, org, member, fake_upstream):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="hang-midway")
    raw = api_key_for(org, member)
    body = {"agent": agent.key, "message": "one two three", "on_disconnect": "cancel"}
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        with post_event_stream(f"{server.base_url}/api/v1/chat", body=body, headers=_bearer(raw)) as stream:
            first = [stream.next_event() for _ in range(3)]
        message = _message(first)
        wait_for(lambda: Message.objects.get(pk=message.pk).status != "streaming", what="the cancel")
        wait_for(
            lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1, what="the upstream abort"
        )
        events = list(MessageEvent.objects.filter(message=message).values_list("event", flat=True))
    message.refresh_from_db()
    assert message.status == Message.Status.CANCELLED and message.finish_reason == "cancelled"
    assert message.content == text_of(first[1:]) and message.content
    assert events[-2:] == ["usage", "message.end"]


def test_cancel_in_the_same_process_and_a_second_cancel_is_409(tmp_path, org, member, fake_upstream):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="hang-midway")
    raw = api_key_for(org, member)
    with run_asgi_server(log_dir=tmp_path, extra_env=ENV) as server:
        with post_event_stream(
            f"{server.base_url}/api/v1/chat",
            body={"agent": agent.key, "message": "a b c"},
            headers=_bearer(raw),
        ) as stream:
            first = [stream.next_event() for _ in range(3)]
            message = _message(first)
            with httpx.Client(base_url=server.base_url, headers=_bearer(raw), timeout=10) as http:
                cancelled = http.post(f"/api/v1/chat/{message.pk}/cancel")
                rest = read_until_end(stream)
                again = http.post(f"/api/v1/chat/{message.pk}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["message"]["status"] == "cancelled"
    assert [e.event for e in rest][-2:] == ["usage", "message.end"] and rest[-1].data[
        "finish_reason"
    ] == "cancelled"
    assert_in_order(first + rest)
    assert again.status_code == 409 and again.json()["error"]["code"] == "ERR_TURN_FINISHED"
    wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1, what="the upstream abort")


# --- two processes: PostgreSQL + Redis -------------------------------------------------------------


def _two_servers(stack: ExitStack, tmp_path):
    redis_url = os.environ["REDIS_URL"]
    servers = []
    for name in ("one", "two"):
        log_dir = tmp_path / name
        log_dir.mkdir()
        servers.append(
            stack.enter_context(run_asgi_server(log_dir=log_dir, redis_url=redis_url, extra_env=ENV))
        )
    return servers


@pytest.mark.postgres
@pytest.mark.redis
def test_a_turn_resumes_from_a_second_process_with_last_event_id_without_gap_or_repeat(
    tmp_path, org, member, fake_upstream
):
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    raw = api_key_for(org, member)
    cookies_headers = _bearer(raw)
    with ExitStack() as stack:
        one, two = _two_servers(stack, tmp_path)
        with post_event_stream(
            f"{one.base_url}/api/v1/chat",
            body={"agent": agent.key, "message": LONG_MESSAGE},
            headers=cookies_headers,
        ) as stream:
            first = [stream.next_event() for _ in range(4)]
        # The client went away; it comes back to the other process while the turn still runs.
        message = _message(first)
        resume_url = f"{two.base_url}/api/v1/chat/{message.pk}/stream"
        with httpx.Client(timeout=httpx.Timeout(10, read=60), headers=cookies_headers) as http:
            with http.stream("GET", resume_url, headers={"Last-Event-ID": first[-1].id}) as response:
                assert response.status_code == 200
                body = "".join(response.iter_text())
            rest = parse_sse(body)
            assert Message.objects.get(pk=message.pk).status == "complete"
            # A finished turn replays from the other process too, and ends.
            replay = parse_sse(http.get(f"{two.base_url}/api/v1/chat/{message.pk}/stream?after=0").text)

    seqs = [int(e["id"]) for e in rest]
    assert seqs == list(range(5, 5 + len(seqs))), seqs
    assert rest[-1]["event"] == "message.end"
    full_text = text_of(first) + "".join(e["data"]["text"] for e in rest if e["event"] == "message.delta")
    assert full_text == f"echo: {LONG_MESSAGE}"
    assert [int(e["id"]) for e in replay] == list(range(1, seqs[-1] + 1))
    assert "".join(e["data"]["text"] for e in replay if e["event"] == "message.delta") == full_text


@pytest.mark.postgres
@pytest.mark.redis
def test_a_live_follower_on_the_second_process_sees_every_event_once(tmp_path, org, member, fake_upstream):
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    raw = api_key_for(org, member)
    with ExitStack() as stack:
        one, two = _two_servers(stack, tmp_path)
        with post_event_stream(
            f"{one.base_url}/api/v1/chat",
            body={"agent": agent.key, "message": LONG_MESSAGE},
            headers=_bearer(raw),
        ) as stream:
            first = [stream.next_event() for _ in range(2)]
            message = _message(first)
            # The follower joins mid-turn: the start it asked to skip, the log so far, then live.
            with httpx.Client(timeout=httpx.Timeout(10, read=60), headers=_bearer(raw)) as http:
                follower = http.get(f"{two.base_url}/api/v1/chat/{message.pk}/stream?after=1")
            origin = first + read_until_end(stream)
    followed = parse_sse(follower.text)
    assert [int(e["id"]) for e in followed] == [int(e.id) for e in origin[1:]]
    assert [e["data"] for e in followed] == [e.data for e in origin[1:]]


@pytest.mark.postgres
@pytest.mark.redis
def test_cancel_sent_to_the_second_process_stops_the_turn_and_aborts_the_upstream(
    tmp_path, org, member, fake_upstream
):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="hang-midway")
    raw = api_key_for(org, member)
    with ExitStack() as stack:
        one, two = _two_servers(stack, tmp_path)
        with post_event_stream(
            f"{one.base_url}/api/v1/chat", body={"agent": agent.key, "message": "x y z"}, headers=_bearer(raw)
        ) as stream:
            first = [stream.next_event() for _ in range(3)]
            message = _message(first)
            with httpx.Client(headers=_bearer(raw), timeout=10) as http:
                cancelled = http.post(f"{two.base_url}/api/v1/chat/{message.pk}/cancel")
            rest = read_until_end(stream)
    assert cancelled.status_code == 200, cancelled.text
    assert rest[-1].event == "message.end" and rest[-1].data == {"finish_reason": "cancelled"}
    assert_in_order(first + rest)
    message.refresh_from_db()
    assert message.status == Message.Status.CANCELLED and message.content == text_of(first)
    wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}") == 1, what="the upstream abort")
