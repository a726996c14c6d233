"""A turn that opens a conversation on a server's loop answers before its rows are written: the
run's request leaves, the caller gets the turn's ids (version 7 UUIDs), its first event goes out,
and only then are the conversation, the messages and the run written. Lookups by those ids wait
for the commit; rows that cannot be written end the stream with an ``error`` event.

``asyncio.run`` stands in for the server's loop (``core.db_threads.on_server_loop``): the rows go
through the loop's writer as under Daphne (on PostgreSQL from the loop, elsewhere from a thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from agents.llm import sent as llm_sent
from agents.models import AgentRun
from agents.services import runs
from chat.models import Conversation, Message, MessageEvent
from chat.selectors import messages as message_selectors
from chat.selectors.conversations import conversation_get
from chat.selectors.messages import turn_message_get
from chat.services import turns
from core.errors import NotFoundError
from core.ids import minted_seconds_ago, uuid7
from tests.chat.conftest import make_agent, make_conversation, make_provider
from tests.polling import await_for, wait_for


async def _follow(started) -> list[turns.TurnEvent]:
    return [event async for event in turns.follow_turn(message_id=started.message_id)]


async def _close_clients() -> None:
    from agents.llm import aclose_clients

    await aclose_clients()


@pytest.mark.django_db(transaction=True)
def test_the_first_delta_goes_out_before_the_rows_are_written_and_the_rows_follow(
    org, member, fake_upstream, allow_loopback, monkeypatch
):
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    agent.org = org
    monkeypatch.setattr(llm_sent, "FIRST_EVENT_HOLD_SECONDS", 30.0)  # the first event, however late
    monkeypatch.setattr(llm_sent, "AFTER_FIRST_EVENT_SECONDS", 0)  # and right after it
    running: list[turns._Turn] = []
    seen_when_written: list[list[str]] = []
    original = turns.turn_opening_groups

    def recorded(openings):
        seen_when_written.append([event.event for event in running[0].events])
        return original(openings)

    monkeypatch.setattr(turns, "turn_opening_groups", recorded)
    monkeypatch.setattr(turns._loop_openings, "_groups_of", recorded)

    async def main():
        started = await turns.astart_turn(
            org=org, user=member, agent=agent, message="one two three", channel="api"
        )
        running.append(turns._running[str(started.message_id)])
        stored_when_answered = running[0].stored.done()
        events = await _follow(started)
        await _close_clients()
        return started, stored_when_answered, events

    started, stored_when_answered, events = asyncio.run(main())

    assert not stored_when_answered
    assert seen_when_written == [["message.start", "message.delta"]]
    assert [e.event for e in events][0] == "message.start" and events[-1].event == "message.end"
    assert "".join(e.data["text"] for e in events if e.event == "message.delta") == "echo: one two three"
    for value in (started.conversation_id, started.message_id, started.user_message_id):
        assert 0 <= minted_seconds_ago(value) < 60
    message = Message.objects.get(pk=started.message_id)
    assert message.status == Message.Status.COMPLETE and message.content == "echo: one two three"
    assert message.last_seq == len(events) == MessageEvent.objects.filter(message=message).count()
    assert Conversation.objects.get(pk=started.conversation_id).message_count == 2
    assert AgentRun.objects.get(pk=message.run_id).status == AgentRun.Status.SUCCEEDED


@pytest.mark.django_db(transaction=True)
def test_the_turns_run_is_made_with_its_rows_after_its_request_has_left(
    org, member, fake_upstream, allow_loopback, monkeypatch
):
    """The turn's ``AgentRun`` is not on the path to its model call: its fields are checked first,
    the row is made with the turn's other rows, under the id its events carried from the start."""
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    agent.org = org
    monkeypatch.setattr(llm_sent, "REQUEST_SENT_WAIT_SECONDS", 30.0)  # the request, however slow
    running: list[turns._Turn] = []
    sent_when_made: list[bool] = []
    real_made = runs.run_made

    def run_made(**kwargs):
        sent_when_made.append(running[0].request_sent.done())
        return real_made(**kwargs)

    monkeypatch.setattr(runs, "run_made", run_made)

    async def main():
        started = await turns.astart_turn(org=org, user=member, agent=agent, message="a b", channel="api")
        running.append(turns._running[str(started.message_id)])
        events = await _follow(started)
        await _close_clients()
        return started, events

    started, events = asyncio.run(main())

    assert sent_when_made == [True]
    run = AgentRun.objects.get(pk=running[0].run_pk)
    assert (run.conversation_id, run.trigger, run.input, run.status) == (
        started.conversation_id,
        "chat",
        "a b",
        AgentRun.Status.SUCCEEDED,
    )
    assert Message.objects.get(pk=started.message_id).run_id == run.pk
    assert events[-1].event == "message.end"


@pytest.mark.django_db(transaction=True)
def test_rows_that_cannot_be_written_end_the_stream_with_an_error_and_call_the_run_off(
    org, member, fake_upstream, allow_loopback, monkeypatch
):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="slow")
    agent.org = org

    key = f"Bearer {provider.api_key}"

    async def broken_write(item):
        # Once the call has reached the upstream (on a loaded machine that may take longer than
        # the rows wait): what is checked below is that calling the run off closes it.
        await await_for(lambda: fake_upstream.requests_for(key), timeout=5)
        raise RuntimeError("the audit table is gone")

    monkeypatch.setattr(turns._loop_openings, "write", broken_write)

    async def main():
        started = await turns.astart_turn(
            org=org, user=member, agent=agent, message="a b c d e f", channel="api"
        )
        events = await asyncio.wait_for(_follow(started), 10)
        for _ in range(200):  # the cancelled run closes its upstream call
            if not turns._running:
                break
            await asyncio.sleep(0.01)
        await _close_clients()
        return started, events

    started, events = asyncio.run(main())

    assert events[0].event == "message.start"
    assert events[-1].event == "error" and events[-1].data["code"] == "ERR_INTERNAL"
    assert "could not be stored" in events[-1].data["message"]
    assert [e.event for e in events].count("error") == 1
    assert not turns._running
    wait_for(lambda: fake_upstream.aborted_for(key), timeout=10)  # noticed on the fake's next write
    assert fake_upstream.aborted_for(key) == 1
    assert not Conversation.objects.exists() and not Message.objects.exists()
    assert not AgentRun.objects.filter(agent=agent).exists()


# --- lookups of ids whose rows may still be on their way --------------------------------------


@pytest.fixture
def sleeps(monkeypatch):
    """The waits of ``row_on_its_way`` (each one a poll for a row that is not there yet)."""
    calls: list[float] = []
    real = time.sleep

    def recorded(seconds):
        calls.append(seconds)
        real(seconds)

    monkeypatch.setattr(message_selectors.time, "sleep", recorded)
    return calls


@pytest.mark.django_db(transaction=True)
def test_a_new_ids_lookup_waits_for_its_row(org, member, sleeps):
    from django.db import connections

    agent = make_agent(org)
    conversation_id, message_id = uuid7(), uuid7()

    def write_later():
        try:
            time.sleep(0.2)  # the turn's rows commit after the client was given their ids
            Conversation.objects.create(pk=conversation_id, org=org, user=member, agent=agent, channel="api")
            Message.objects.create(
                pk=message_id,
                org=org,
                conversation_id=conversation_id,
                index=0,
                role="assistant",
                content="hi",
            )
        finally:
            connections.close_all()

    writer = threading.Thread(target=write_later)
    writer.start()
    try:
        found = turn_message_get(org=org, user=member, message_id=message_id)
        assert conversation_get(org=org, user=member, conversation_id=conversation_id).pk == conversation_id
    finally:
        writer.join()
    assert found.pk == message_id and found.conversation_id == conversation_id
    assert sleeps  # it did wait


@pytest.mark.django_db
def test_unknown_old_and_foreign_ids_answer_404_without_waiting(org, other_org, member, outsider, sleeps):
    theirs = make_conversation(other_org, outsider, make_agent(other_org), messages=[("user", "theirs")])
    their_message = theirs.messages.get()
    old = uuid.UUID(int=(uuid7().int & ~(((1 << 48) - 1) << 80)) | (1_600_000_000_000 << 80))
    assert minted_seconds_ago(old) > 3600
    for unknown in (uuid.uuid4(), old):
        with pytest.raises(NotFoundError):
            turn_message_get(org=org, user=member, message_id=unknown)
        with pytest.raises(NotFoundError):
            conversation_get(org=org, user=member, conversation_id=unknown)
    # Another org's rows exist: found at once, and still 404.
    with pytest.raises(NotFoundError):
        turn_message_get(org=org, user=member, message_id=their_message.pk)
    with pytest.raises(NotFoundError):
        conversation_get(org=org, user=member, conversation_id=theirs.pk)
    assert sleeps == []


@pytest.mark.django_db
def test_a_new_id_whose_row_never_comes_is_404_after_the_grace(org, member, sleeps, monkeypatch):
    monkeypatch.setattr(message_selectors, "OPENING_GRACE_SECONDS", 0.2)
    with pytest.raises(NotFoundError):
        turn_message_get(org=org, user=member, message_id=uuid7())
    assert 1 <= len(sleeps) <= 0.2 / message_selectors.OPENING_POLL_SECONDS + 1
