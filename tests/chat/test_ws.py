"""The WebSocket RPC socket at /ws, driven by a real client (``websockets``) against a real server
process (Daphne, ``run_asgi_server``) with the fake OpenAI-compatible upstream behind it.

One server serves the whole module (starting Daphne costs seconds); each test makes its own org,
users, keys and agents in the shared test database (``transaction=True``, so the server sees them).
The server runs with small limits (``WS_MAX_FRAME_BYTES=4096``, ``WS_MAX_IN_FLIGHT=2``) so that the
limits are cheap to reach. After every error the test sends another ``ping``: the socket stays open.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from accounts.models import AuditLog, Role
from accounts.services.keys import api_key_create, api_key_revoke
from chat.models import Conversation, Message
from tests.chat.conftest import make_agent, make_conversation, make_provider
from tests.core.test_sse import redis_url  # noqa: F401  (fixture)
from tests.factories import MembershipFactory
from tests.polling import wait_for
from tests.support.asgi_server import run_asgi_server, session_cookies

pytestmark = pytest.mark.django_db(transaction=True)

FRAME_LIMIT = 4096
IN_FLIGHT = 2


@pytest.fixture(scope="module")
def ws_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """One Daphne for the module, allowed to reach the fake upstream on loopback."""
    extra_env = {
        "OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "WS_MAX_FRAME_BYTES": str(FRAME_LIMIT),
        "WS_MAX_IN_FLIGHT": str(IN_FLIGHT),
        "STREAM_POLL_SECONDS": "0.1",
        # Without Redis each process caches key lookups on its own; this test process changes keys
        # behind the server's back, so the server must not cache them.
        "AUTH_CACHE_SECONDS": "0",
    }
    with (
        django_db_blocker.unblock(),
        run_asgi_server(log_dir=tmp_path_factory.mktemp("ws"), extra_env=extra_env) as server,
    ):
        yield server


class Rpc:
    """A synchronous RPC client over one socket: ``call`` sends a request and returns its answer,
    keeping the events that arrive meanwhile for ``next_event``. Every wait is bounded."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.counter = 0
        self.events: list[dict[str, Any]] = []
        self.answers: dict[Any, dict[str, Any]] = {}

    def send(self, method: str, params: dict[str, Any] | None = None, *, request_id: Any = None) -> Any:
        self.counter += 1
        request_id = request_id if request_id is not None else f"r{self.counter}"
        frame: dict[str, Any] = {"type": "req", "id": request_id, "method": method}
        if params is not None:
            frame["params"] = params
        self.ws.send(json.dumps(frame))
        return request_id

    def _read(self, timeout: float) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        if frame["type"] == "event":
            self.events.append(frame)
        elif frame["type"] == "res":
            self.answers[frame["id"]] = frame
        else:
            raise AssertionError(f"unexpected frame {frame}")
        return frame

    def answer(self, request_id: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while request_id not in self.answers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no answer to {request_id} within {timeout}s")
            self._read(remaining)
        return self.answers.pop(request_id)

    def call(self, method: str, params: dict[str, Any] | None = None, **kwargs) -> dict[str, Any]:
        return self.answer(self.send(method, params, **kwargs))

    def ok(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        frame = self.call(method, params)
        assert frame["ok"] is True, frame
        return frame["payload"]

    def error(self, method: str, params: dict[str, Any] | None = None, code: str | None = None) -> dict:
        frame = self.call(method, params)
        assert frame["ok"] is False, frame
        assert set(frame["error"]) >= {"code", "message"} and frame["error"]["message"]
        if code is not None:
            assert frame["error"]["code"] == code, frame
        return frame["error"]

    def raw_error(self, text: str | bytes, timeout: float = 15.0) -> dict[str, Any]:
        """Send a raw frame that cannot be served; return the error answer it gets."""
        before = set(self.answers)
        self.ws.send(text)
        deadline = time.monotonic() + timeout
        while True:
            new = [k for k in self.answers if k not in before] or [None] * (None in self.answers)
            if new:
                frame = self.answers.pop(new[0])
                assert frame["ok"] is False, frame
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no answer to a raw frame within {timeout}s")
            self._read(remaining)

    def next_event(self, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no event within {timeout}s")
            self._read(remaining)
        return self.events.pop(0)

    def turn_events(self, message_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Every event of one turn up to its ``chat.done`` / ``chat.error`` (others are kept)."""
        deadline = time.monotonic() + timeout
        mine: list[dict[str, Any]] = []
        while True:
            index = next(
                (i for i, e in enumerate(self.events) if e["payload"].get("message_id") == message_id), None
            )
            if index is not None:
                event = self.events.pop(index)
                mine.append(event)
                if event["event"] in ("chat.done", "chat.error"):
                    return mine
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"turn {message_id} did not end within {timeout}s: {mine}")
            self._read(remaining)

    def assert_alive(self) -> None:
        assert self.ok("ping")["pong"] is True


def ws_url(server) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


@contextmanager
def open_rpc(server, *, token: str | None = None, cookies: dict[str, str] | None = None, query: str = ""):
    headers = {}
    if cookies:
        headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    with ws_connect(ws_url(server) + query, additional_headers=headers, open_timeout=10) as ws:
        rpc = Rpc(ws)
        if token is not None:
            rpc.ok("connect", {"token": token})
        yield rpc


def make_key(org, user, **fields) -> str:
    _, raw = api_key_create(org=org, actor=user, name=f"ws-{uuid.uuid4().hex[:6]}", **fields)
    return raw


@pytest.fixture
def ws_agent(org, fake_upstream):
    return make_agent(org, make_provider(org, fake_upstream))


# --- connect, auth, ping -----------------------------------------------------------------------


def test_connect_with_a_key_answers_user_and_org_then_ping(ws_server, org, member):
    key = make_key(org, member)
    with open_rpc(ws_server) as rpc:
        payload = rpc.ok("connect", {"token": key})
        assert payload["user"] == {"id": str(member.pk), "email": member.email}
        assert payload["org"] == {"id": str(org.pk), "name": org.name}
        assert payload["role"] == Role.MEMBER and payload["via"] == "key"
        pong = rpc.ok("ping")
        assert pong["pong"] is True
        assert abs(pong["ts"] / 1000 - time.time()) < 60


def test_before_auth_every_method_but_connect_answers_not_authenticated(ws_server, org, member):
    with open_rpc(ws_server) as rpc:
        for method in ("ping", "agents.list", "sessions.list", "chat.send"):
            rpc.error(method, {}, code="ERR_NOT_AUTHENTICATED")
        rpc.error("connect", {}, code="ERR_NOT_AUTHENTICATED")
        rpc.error("connect", {"token": "svc_nope"}, code="ERR_AUTHENTICATION_FAILED")
        rpc.error("connect", {"token": 42}, code="ERR_AUTHENTICATION_FAILED")
        rpc.error("ping", code="ERR_NOT_AUTHENTICATED")  # still open, still anonymous
        rpc.ok("connect", {"token": make_key(org, member)})
        rpc.assert_alive()


def test_a_revoked_key_is_refused_at_connect_and_on_the_next_call(ws_server, org, owner, member):
    key_row, raw = api_key_create(org=org, actor=member, name="soon revoked")
    with open_rpc(ws_server, token=raw) as rpc:
        assert rpc.ok("agents.list")["total"] == 0
        api_key_revoke(key=key_row, actor=owner)
        error = rpc.error("agents.list", code="ERR_NOT_AUTHENTICATED")
        assert "no longer valid" in error["message"]
        rpc.error("ping", code="ERR_NOT_AUTHENTICATED")  # signed out, socket open
        rpc.error("connect", {"token": raw}, code="ERR_KEY_REVOKED")


def test_session_cookie_authenticates_the_socket(ws_server, org, member, ws_agent):
    conversation = make_conversation(org, member, ws_agent, [("user", "hi"), ("assistant", "hello")])
    with open_rpc(ws_server, cookies=session_cookies(member)) as rpc:
        rpc.assert_alive()  # no connect needed
        me = rpc.ok("connect")
        assert (
            me["via"] == "session" and me["user"]["id"] == str(member.pk) and me["org"]["id"] == str(org.pk)
        )
        assert [c["id"] for c in rpc.ok("sessions.list")["items"]] == [str(conversation.pk)]
        patched = rpc.ok("sessions.patch", {"conversation_id": str(conversation.pk), "title": "Via session"})
        assert patched["title"] == "Via session"
    audit = AuditLog.objects.filter(org=org, entity_id=str(conversation.pk)).latest("created_at")
    assert audit.actor == member


def test_session_with_another_orgs_id_is_not_found(ws_server, org, member, other_org):
    with open_rpc(ws_server, cookies=session_cookies(member), query=f"?org={other_org.pk}") as rpc:
        rpc.error("ping", code="ERR_NOT_FOUND")
        rpc.ok("connect", {"token": make_key(org, member)})  # a key still works on that socket
        rpc.assert_alive()


def test_a_foreign_origin_is_refused_but_no_origin_is_allowed(ws_server, org, member):
    with pytest.raises(InvalidStatus):
        ws_connect(ws_url(ws_server), origin="http://evil.example", open_timeout=10)
    with ws_connect(ws_url(ws_server), origin="http://127.0.0.1", open_timeout=10) as ws:
        Rpc(ws).error("ping", code="ERR_NOT_AUTHENTICATED")


# --- frame errors and limits -------------------------------------------------------------------


def test_malformed_frames_answer_bad_frame_and_the_socket_stays_open(ws_server, org, member):
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        for text in (
            "{not json",
            "[1, 2]",
            '"req"',
            json.dumps({"id": "a", "method": "ping"}),  # no type
            json.dumps({"type": "res", "id": "a", "method": "ping"}),
            json.dumps({"type": "req", "method": "ping"}),  # no id
            json.dumps({"type": "req", "id": "", "method": "ping"}),
            json.dumps({"type": "req", "id": "a"}),  # no method
            json.dumps({"type": "req", "id": "a", "method": 7}),
        ):
            frame = rpc.raw_error(text)
            assert frame["error"]["code"] == "ERR_BAD_FRAME", (text, frame)
            rpc.assert_alive()
        frame = rpc.raw_error(b"\x00\x01binary")
        assert frame["error"]["code"] == "ERR_BAD_FRAME" and frame["id"] is None
        rpc.assert_alive()
        # An id that could be read is echoed in the error answer.
        assert rpc.raw_error(json.dumps({"type": "req", "id": "x1"}))["id"] == "x1"


def test_unknown_method_and_bad_params(ws_server, org, member, ws_agent):
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        error = rpc.error("nope.nothing", code="ERR_UNKNOWN_METHOD")
        assert "nope.nothing" in error["message"]
        rpc.assert_alive()
        assert rpc.call("ping", request_id=17)["id"] == 17  # integer ids are echoed as they came
        frame = rpc.raw_error(json.dumps({"type": "req", "id": "p", "method": "ping", "params": [1]}))
        assert frame["id"] == "p" and frame["error"]["code"] == "ERR_VALIDATION"
        for method, params in (
            ("sessions.preview", {}),
            ("sessions.preview", {"conversation_id": "not-a-uuid"}),
            ("sessions.patch", {"conversation_id": str(uuid.uuid4())}),  # nothing to change
            ("chat.history", {"conversation_id": str(uuid.uuid4()), "limit": 0}),
            ("chat.send", {"agent": ws_agent.key}),  # no message
            ("chat.send", {"message": "hi"}),  # no agent
            ("chat.send", {"agent": ws_agent.key, "message": "hi", "on_disconnect": "explode"}),
            ("chat.abort", {"message_id": "x"}),
            ("sessions.list", {"limit": 10_000}),
        ):
            error = rpc.error(method, params, code="ERR_VALIDATION")
            assert error["details"]["fields"], (method, error)
            rpc.assert_alive()
        assert not Message.objects.exists()


def test_a_frame_over_the_limit_answers_frame_too_large(ws_server, org, member):
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        big = json.dumps({"type": "req", "id": "big", "method": "ping", "params": {"pad": "x" * FRAME_LIMIT}})
        frame = rpc.raw_error(big)
        assert frame["id"] == "big"
        assert frame["error"]["code"] == "ERR_FRAME_TOO_LARGE"
        assert str(FRAME_LIMIT) in frame["error"]["message"]
        rpc.assert_alive()
        # Just under the limit is served (and an unknown param of ping is ignored).
        fits = {"type": "req", "id": "fits", "method": "ping", "params": {"pad": "x" * (FRAME_LIMIT - 100)}}
        rpc.ws.send(json.dumps(fits))
        assert rpc.answer("fits")["ok"] is True


def test_more_turns_in_flight_than_the_limit_are_refused(ws_server, org, member, fake_upstream):
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    words = " ".join(f"w{i}" for i in range(200))  # 200 deltas 50 ms apart: ~10 s unless aborted
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        started = [rpc.ok("chat.send", {"agent": agent.key, "message": words}) for _ in range(IN_FLIGHT)]
        error = rpc.error(
            "chat.send", {"agent": agent.key, "message": "one more"}, code="ERR_TOO_MANY_REQUESTS"
        )
        assert str(IN_FLIGHT) in error["message"]
        rpc.error("sessions.list", code="ERR_TOO_MANY_REQUESTS")
        rpc.assert_alive()  # ping and chat.abort are never refused by the limit
        for turn in started:
            rpc.ok("chat.abort", {"message_id": turn["message_id"]})
        for turn in started:
            assert rpc.turn_events(turn["message_id"])[-1]["event"] in ("chat.done", "chat.error")
        # Both slots are free again.
        assert rpc.ok("sessions.list")["total"] == IN_FLIGHT


def test_a_burst_of_requests_over_the_limit_gets_an_answer_each(ws_server, org, member):
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        ids = [rpc.send("sessions.list") for _ in range(30)]
        answers = [rpc.answer(i) for i in ids]
        codes = {a["error"]["code"] for a in answers if not a["ok"]}
        assert codes <= {"ERR_TOO_MANY_REQUESTS"}
        assert sum(a["ok"] for a in answers) >= IN_FLIGHT
        rpc.assert_alive()


# --- chat --------------------------------------------------------------------------------------


def test_chat_send_streams_deltas_with_increasing_seq_and_ends_with_done(ws_server, org, member, ws_agent):
    key_row, raw = api_key_create(org=org, actor=member, name="streaming")
    with open_rpc(ws_server, token=raw) as rpc:
        accepted = rpc.ok("chat.send", {"agent": ws_agent.key, "message": "hello over the socket"})
        assert set(accepted) >= {"conversation_id", "message_id", "user_message_id"}
        events = rpc.turn_events(accepted["message_id"])
        names = [e["event"] for e in events]
        assert names[-1] == "chat.done" and set(names[:-1]) == {"chat.delta"}, names
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert "".join(e["payload"]["text"] for e in events[:-1]) == "echo: hello over the socket"
        done = events[-1]["payload"]
        assert done["finish_reason"] == "stop"
        assert done["conversation_id"] == accepted["conversation_id"]
        assert done["usage"]["prompt_tokens"] > 0 and done["usage"]["completion_tokens"] > 0

        # A second turn in the same conversation; seq keeps counting up on the connection.
        again = rpc.ok(
            "chat.send",
            {"agent": str(ws_agent.pk), "message": "again", "conversation_id": accepted["conversation_id"]},
        )
        assert again["conversation_id"] == accepted["conversation_id"]
        more = rpc.turn_events(again["message_id"])
        assert more[0]["seq"] > seqs[-1] and more[-1]["event"] == "chat.done"
        history = rpc.ok("chat.history", {"conversation_id": accepted["conversation_id"]})
        assert [m["content"] for m in history["messages"]] == [
            "hello over the socket",
            "echo: hello over the socket",
            "again",
            "echo: again",
        ]
    conversation = Conversation.objects.get(pk=accepted["conversation_id"])
    assert conversation.channel == "ws" and conversation.user == member
    assert Message.objects.get(pk=accepted["message_id"]).status == Message.Status.COMPLETE
    # Usage is recorded (by the billing listener, just after the last chunk) as coming from "ws".
    from billing.models import UsageRecord

    wait_for(lambda: UsageRecord.objects.filter(org=org).count() >= 2, timeout=10)  # the server's write
    records = UsageRecord.objects.filter(org=org)
    assert records.count() == 2
    assert set(records.values_list("channel", flat=True)) == {"ws"}
    assert set(records.values_list("api_key_id", flat=True)) == {key_row.pk}


def test_a_tool_turn_sends_tool_call_and_tool_result(ws_server, org, member, fake_upstream):
    agent = make_agent(org, make_provider(org, fake_upstream), model="tools-1", tools=["current_time"])
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        accepted = rpc.ok("chat.send", {"agent": agent.key, "message": "what time is it"})
        events = rpc.turn_events(accepted["message_id"])
        names = [e["event"] for e in events]
        assert names.index("chat.tool_call") < names.index("chat.tool_result") < names.index("chat.done")
        call = next(e["payload"] for e in events if e["event"] == "chat.tool_call")
        result = next(e["payload"] for e in events if e["event"] == "chat.tool_result")
        assert call["name"] == "current_time" and call["id"] == result["id"]
        assert (
            "".join(e["payload"]["text"] for e in events if e["event"] == "chat.delta")
            == "done after 1 tools"
        )


def test_chat_abort_stops_the_turn_and_keeps_the_partial_answer(ws_server, org, member, fake_upstream):
    provider = make_provider(org, fake_upstream)
    agent = make_agent(org, provider, model="slow")
    words = " ".join(f"w{i}" for i in range(200))
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        accepted = rpc.ok("chat.send", {"agent": agent.key, "message": words})
        first = rpc.next_event()
        assert first["event"] == "chat.delta"
        aborted = rpc.ok("chat.abort", {"message_id": accepted["message_id"]})
        assert aborted == {"message_id": accepted["message_id"], "cancelled": True}
        events = rpc.turn_events(accepted["message_id"])
        assert events[-1]["event"] == "chat.done"
        assert events[-1]["payload"]["finish_reason"] == "cancelled"
        rpc.error("chat.abort", {"message_id": accepted["message_id"]}, code="ERR_TURN_FINISHED")
        rpc.error("chat.abort", {"message_id": str(uuid.uuid4())}, code="ERR_NOT_FOUND")
        rpc.assert_alive()
    message = Message.objects.get(pk=accepted["message_id"])
    assert message.status == Message.Status.CANCELLED
    full = "echo: " + words
    assert message.content and full.startswith(message.content) and len(message.content) < len(full)
    # The fake, in another process, notices the closed stream on its next write.
    wait_for(lambda: fake_upstream.aborted_for(f"Bearer {provider.api_key}"), timeout=10)
    assert fake_upstream.aborted_for(f"Bearer {provider.api_key}")


def test_a_failing_upstream_ends_the_turn_with_chat_error(ws_server, org, member, fake_upstream):
    agent = make_agent(org, make_provider(org, fake_upstream), model="fail-400")
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        accepted = rpc.ok("chat.send", {"agent": agent.key, "message": "boom"})
        events = rpc.turn_events(accepted["message_id"])
        assert events[-1]["event"] == "chat.error"
        assert events[-1]["payload"]["code"].startswith("ERR_") and events[-1]["payload"]["message"]
        rpc.assert_alive()


# --- sessions ----------------------------------------------------------------------------------


def test_sessions_list_preview_patch_reset_delete(ws_server, org, member, owner, ws_agent):
    mine = make_conversation(org, member, ws_agent, [("user", f"m{i}") for i in range(8)], title="Mine")
    make_conversation(org, owner, ws_agent, [("user", "owner's")], title="Not mine")
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        listed = rpc.ok("sessions.list")
        assert listed["total"] == 1 and [c["id"] for c in listed["items"]] == [str(mine.pk)]
        assert listed["items"][0]["agent"]["key"] == ws_agent.key and listed["limit"] == 50

        preview = rpc.ok("sessions.preview", {"conversation_id": str(mine.pk)})
        assert preview["conversation"]["title"] == "Mine"
        assert [m["content"] for m in preview["messages"]] == ["m3", "m4", "m5", "m6", "m7"]
        assert len(rpc.ok("sessions.preview", {"conversation_id": str(mine.pk), "limit": 2})["messages"]) == 2

        page = rpc.ok("chat.history", {"conversation_id": str(mine.pk), "limit": 3})
        assert [m["content"] for m in page["messages"]] == ["m0", "m1", "m2"] and page["total"] == 8
        rest = rpc.ok(
            "chat.history", {"conversation_id": str(mine.pk), "cursor": page["next_cursor"], "limit": 10}
        )
        assert [m["content"] for m in rest["messages"]][0] == "m3" and rest["next_cursor"] is None
        rpc.error(
            "chat.history", {"conversation_id": str(mine.pk), "cursor": "garbage!"}, code="ERR_INVALID_CURSOR"
        )

        patched = rpc.ok(
            "sessions.patch", {"conversation_id": str(mine.pk), "title": "Renamed", "archived": True}
        )
        assert patched["title"] == "Renamed" and patched["archived"] is True
        assert rpc.ok("sessions.list", {"archived": False})["total"] == 0
        assert rpc.ok("sessions.list", {"archived": True})["total"] == 1
        assert rpc.ok("sessions.list", {"q": "renam"})["total"] == 1
        assert (
            rpc.ok("sessions.patch", {"conversation_id": str(mine.pk), "archived": False})["archived"]
            is False
        )

        reset = rpc.ok("sessions.reset", {"conversation_id": str(mine.pk)})
        assert reset["id"] == str(mine.pk) and reset["message_count"] == 0
        assert rpc.ok("sessions.preview", {"conversation_id": str(mine.pk)})["messages"] == []

        deleted = rpc.ok("sessions.delete", {"conversation_id": str(mine.pk)})
        assert deleted == {"conversation_id": str(mine.pk), "deleted": True}
        rpc.error("sessions.preview", {"conversation_id": str(mine.pk)}, code="ERR_NOT_FOUND")
        rpc.assert_alive()
    assert not Conversation.objects.filter(pk=mine.pk).exists()
    assert Conversation.objects.filter(user=owner).count() == 1


def test_agents_list_shows_the_agents_the_caller_may_see(
    ws_server, org, owner, member, other_org, fake_upstream
):
    from agents.models import Agent

    visible = make_agent(org, name="Visible")
    make_agent(org, owner=owner, visibility=Agent.Visibility.PRIVATE, name="Private")
    make_agent(other_org, name="Foreign")
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        listed = rpc.ok("agents.list")
        assert [a["id"] for a in listed["items"]] == [str(visible.pk)]
        assert set(listed["items"][0]) >= {"id", "key", "name", "model", "status", "online"}
    with open_rpc(ws_server, token=make_key(org, owner)) as rpc:  # an OWNER sees every agent of the org
        assert rpc.ok("agents.list")["total"] == 2


# --- isolation and permissions -----------------------------------------------------------------


def test_another_orgs_rows_answer_not_found(ws_server, org, member, other_org, outsider, fake_upstream):
    foreign_agent = make_agent(other_org, make_provider(other_org, fake_upstream))
    foreign = make_conversation(other_org, outsider, foreign_agent, [("user", "secret")])
    foreign_message = Message.objects.get(conversation=foreign)
    own_agent = make_agent(org, make_provider(org, fake_upstream))
    with open_rpc(ws_server, token=make_key(org, member)) as rpc:
        conversation = {"conversation_id": str(foreign.pk)}
        for method, params in (
            ("sessions.preview", conversation),
            ("sessions.patch", {**conversation, "title": "mine now"}),
            ("sessions.reset", conversation),
            ("sessions.delete", conversation),
            ("chat.history", conversation),
            ("chat.send", {"agent": own_agent.key, "message": "hi", **conversation}),
            ("chat.send", {"agent": str(foreign_agent.pk), "message": "hi"}),
            ("chat.send", {"agent": foreign_agent.key, "message": "hi"}),
            ("chat.abort", {"message_id": str(foreign_message.pk)}),
        ):
            rpc.error(method, params, code="ERR_NOT_FOUND")
            rpc.assert_alive()
        assert rpc.ok("sessions.list")["total"] == 0
    foreign.refresh_from_db()
    assert foreign.title == "" and Message.objects.filter(conversation=foreign).count() == 1


def test_roles_and_key_scopes_are_enforced_per_method(ws_server, org, owner, ws_agent):
    viewer = MembershipFactory(org=org, role=Role.VIEWER).user
    with open_rpc(ws_server, token=make_key(org, viewer)) as rpc:
        assert rpc.ok("agents.list")["total"] == 1  # VIEWER may read agents
        error = rpc.error("chat.send", {"agent": ws_agent.key, "message": "hi"}, code="ERR_PERMISSION_DENIED")
        assert error["details"]["required_role"] == Role.MEMBER
        rpc.error("sessions.list", code="ERR_PERMISSION_DENIED")
        rpc.assert_alive()
    scoped = make_key(org, owner, scopes=["agents:read", "conversations:read"])
    with open_rpc(ws_server, token=scoped) as rpc:
        assert rpc.ok("agents.list")["total"] == 1
        assert rpc.ok("sessions.list")["total"] == 0
        error = rpc.error("chat.send", {"agent": ws_agent.key, "message": "hi"}, code="ERR_PERMISSION_DENIED")
        assert error["details"]["required_scope"] == "chat:write"
        rpc.error("sessions.delete", {"conversation_id": str(uuid.uuid4())}, code="ERR_PERMISSION_DENIED")
        rpc.assert_alive()
    assert not Message.objects.exists()


def test_a_member_removed_mid_connection_loses_access(ws_server, org, member):
    with open_rpc(ws_server, cookies=session_cookies(member)) as rpc:
        assert rpc.ok("sessions.list")["total"] == 0
        member.memberships.filter(org=org).delete()
        rpc.error("sessions.list", code="ERR_NOT_AUTHENTICATED")
        rpc.error("ping", code="ERR_NOT_AUTHENTICATED")


# --- scale-out: the Redis channel layer ----------------------------------------------------------


@pytest.mark.redis
def test_a_turn_streamed_by_one_process_is_aborted_from_another(
    tmp_path,
    org,
    member,
    fake_upstream,
    redis_url,  # noqa: F811
):
    """Two servers on the Redis channel layer (database polling at 30 s, so events must be pushed):
    a socket on the first streams a turn, a socket on the second aborts it."""
    agent = make_agent(org, make_provider(org, fake_upstream), model="slow")
    key = make_key(org, member)
    extra_env = {
        "OUTBOUND_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "STREAM_POLL_SECONDS": "30",
        "SSE_KEEPALIVE_SECONDS": "30",
    }
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with (
        run_asgi_server(log_dir=tmp_path / "one", redis_url=redis_url, extra_env=extra_env) as one,
        run_asgi_server(log_dir=tmp_path / "two", redis_url=redis_url, extra_env=extra_env) as two,
        open_rpc(one, token=key) as streaming,
        open_rpc(two, token=key) as aborting,
    ):
        words = " ".join(f"w{i}" for i in range(200))
        accepted = streaming.ok("chat.send", {"agent": agent.key, "message": words})
        assert streaming.next_event()["event"] == "chat.delta"
        # The turn's rows may still be on their way (it answers first): the abort's lookup waits.
        aborting.ok("chat.abort", {"message_id": accepted["message_id"]})
        assert aborting.ok("sessions.list")["items"][0]["id"] == accepted["conversation_id"]
        events = streaming.turn_events(accepted["message_id"], timeout=15)
        assert events[-1]["event"] == "chat.done" and events[-1]["payload"]["finish_reason"] == "cancelled"
    assert Message.objects.get(pk=accepted["message_id"]).status == Message.Status.CANCELLED


def test_a_session_picks_its_org_with_the_org_query_and_ends_with_logout(ws_server, org, member, other_org):
    MembershipFactory(org=other_org, user=member, role=Role.VIEWER)
    cookies = session_cookies(member)
    with open_rpc(ws_server, cookies=cookies, query=f"?org={other_org.pk}") as rpc:
        me = rpc.ok("connect")
        assert me["org"]["id"] == str(other_org.pk) and me["role"] == Role.VIEWER
        rpc.error("sessions.list", code="ERR_PERMISSION_DENIED")  # a VIEWER there
    with open_rpc(ws_server, cookies=cookies, query=f"?org={org.pk}") as rpc:
        assert rpc.ok("connect")["org"]["id"] == str(org.pk)
        assert rpc.ok("sessions.list")["total"] == 0
        from django.contrib.sessions.models import Session

        Session.objects.all().delete()  # what logging out does to the session row
        error = rpc.error("sessions.list", code="ERR_NOT_AUTHENTICATED")
        assert "logged out" in error["message"]
