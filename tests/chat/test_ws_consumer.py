"""Fine-grained cases of the /ws consumer and the ``core.rpc`` registry, in process
(``channels.testing.WebsocketCommunicator`` against ``config.asgi.application``).

Methods registered here exist only for these tests (``ws_test.*``) and are removed again; they
make the consumer's own rules observable: answers before spawned events, the in-flight limit with
requests that wait for the test, work cancelled when the socket closes, unexpected exceptions,
staff-only methods and the request context of each frame.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from accounts.models import Role
from accounts.services.keys import api_key_create
from config.asgi import application
from core import context
from core.rpc import (
    RpcCall,
    get_rpc_method,
    register_rpc_method,
    rpc_method,
    rpc_method_names,
    unregister_rpc_method,
)
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db(transaction=True)  # consumers close old DB connections per frame


@pytest.fixture
def registered():
    """Register throwaway methods for one test; they are removed afterwards."""
    names: list[str] = []

    def register(name: str, handler: Callable, **options) -> None:
        register_rpc_method(name, handler, **options)
        names.append(name)

    yield register
    for name in names:
        unregister_rpc_method(name)


def run(scenario) -> None:
    async_to_sync(scenario)()


async def open_socket(token: str | None = None, **kwargs) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, "/ws", **kwargs)
    connected, _ = await communicator.connect()
    assert connected
    if token is not None:
        answer = await call(communicator, "connect", {"token": token})
        assert answer["ok"], answer
    return communicator


async def call(communicator, method: str, params=None, request_id: str = "1") -> dict:
    await communicator.send_to(
        text_data=json.dumps({"type": "req", "id": request_id, "method": method, "params": params or {}})
    )
    return json.loads(await communicator.receive_from(timeout=5))


def key_for(org, user) -> str:
    return api_key_create(org=org, actor=user, name="consumer test")[1]


# --- registry ----------------------------------------------------------------------------------


def test_registry_refuses_a_second_handler_for_a_name(registered):
    async def one(call):
        return {}

    async def other(call):
        return {}

    registered("ws_test.one", one, role="VIEWER")
    register_rpc_method("ws_test.one", one, role="VIEWER")  # the same handler again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_rpc_method("ws_test.one", other)
    with pytest.raises(ValueError):
        register_rpc_method(" bad", one)
    assert get_rpc_method("ws_test.one").role == "VIEWER"
    assert {"connect", "ping", "chat.send", "sessions.list", "agents.list"} <= set(rpc_method_names())


def test_the_decorator_registers_and_the_consumer_dispatches(org, member):
    @rpc_method("ws_test.echo", scope_area="chat", role=Role.MEMBER)
    async def echo(call: RpcCall):
        return {"echo": call.params, "user": str(call.conn.user.pk), "org": str(call.conn.org.pk)}

    token = key_for(org, member)
    try:

        async def scenario():
            socket = await open_socket(token)
            answer = await call(socket, "ws_test.echo", {"a": 1}, request_id="e")
            assert answer == {
                "type": "res",
                "id": "e",
                "ok": True,
                "payload": {"echo": {"a": 1}, "user": str(member.pk), "org": str(org.pk)},
            }
            await socket.disconnect()

        run(scenario)
    finally:
        unregister_rpc_method("ws_test.echo")


# --- the consumer's own rules ------------------------------------------------------------------


def test_the_answer_goes_out_before_the_events_of_the_work_it_spawned(registered, org, member):
    async def starts_work(call: RpcCall):
        async def work():
            await call.conn.send_event("ws_test.tick", {"n": 1})
            await call.conn.send_event("ws_test.tick", {"n": 2})

        call.conn.spawn("ticks", work())
        await asyncio.sleep(0.05)  # the work would run now if it were not held until the answer
        return {"started": True}

    registered("ws_test.start", starts_work)

    token = key_for(org, member)

    async def scenario():
        socket = await open_socket(token)
        await socket.send_to(text_data=json.dumps({"type": "req", "id": "s", "method": "ws_test.start"}))
        frames = [json.loads(await socket.receive_from(timeout=5)) for _ in range(3)]
        assert [f["type"] for f in frames] == ["res", "event", "event"]
        assert [f["payload"]["n"] for f in frames[1:]] == [1, 2]
        assert frames[2]["seq"] == frames[1]["seq"] + 1
        await socket.disconnect()

    run(scenario)


def test_in_flight_limit_counts_waiting_requests_and_frees_slots(registered, org, member, settings):
    settings.WS_MAX_IN_FLIGHT = 3
    release = asyncio.Event()

    async def waits(call: RpcCall):
        await release.wait()
        return {"released": True}

    registered("ws_test.wait", waits)

    token = key_for(org, member)

    async def scenario():
        socket = await open_socket(token)
        for i in range(3):
            await socket.send_to(
                text_data=json.dumps({"type": "req", "id": f"w{i}", "method": "ws_test.wait"})
            )
        refused = await call(socket, "ws_test.wait", request_id="w3")
        assert refused["error"]["code"] == "ERR_TOO_MANY_REQUESTS" and refused["id"] == "w3"
        pong = await call(socket, "ping", request_id="p")  # exempt from the limit
        assert pong["ok"]
        release.set()
        answers = {json.loads(await socket.receive_from(timeout=5))["id"] for _ in range(3)}
        assert answers == {"w0", "w1", "w2"}
        again = await call(socket, "ws_test.wait", request_id="w4")
        assert again["ok"]
        await socket.disconnect()

    run(scenario)


def test_closing_the_socket_cancels_its_requests_and_work(registered, org, member):
    cancelled: list[str] = []

    async def forever(call: RpcCall):
        async def work():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append("work")
                raise

        call.conn.spawn("forever", work())
        return {}

    async def hangs(call: RpcCall):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append("request")
            raise

    registered("ws_test.forever", forever)
    registered("ws_test.hang", hangs)

    token = key_for(org, member)

    async def scenario():
        socket = await open_socket(token)
        assert (await call(socket, "ws_test.forever"))["ok"]
        await socket.send_to(text_data=json.dumps({"type": "req", "id": "h", "method": "ws_test.hang"}))
        await asyncio.sleep(0.05)
        await socket.disconnect()
        for _ in range(100):
            if len(cancelled) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(cancelled) == ["request", "work"]

    run(scenario)


def test_an_unexpected_exception_answers_internal_error_and_the_socket_stays_open(registered, org, member):
    async def breaks(call: RpcCall):
        raise RuntimeError("secret detail")

    registered("ws_test.break", breaks)

    token = key_for(org, member)

    async def scenario():
        socket = await open_socket(token)
        answer = await call(socket, "ws_test.break", request_id="b")
        assert answer["ok"] is False and answer["error"]["code"] == "ERR_INTERNAL"
        assert "secret" not in json.dumps(answer)
        assert (await call(socket, "ping"))["ok"]
        await socket.disconnect()

    run(scenario)


def test_staff_only_methods(registered, org, member):
    async def staff(call: RpcCall):
        return {"staff": True}

    registered("ws_test.staff", staff, staff_only=True)
    staff_user = MembershipFactory(org=org, role=Role.OWNER).user
    staff_user.is_staff = True
    staff_user.save()
    staff_token = key_for(org, staff_user)

    token = key_for(org, member)

    async def scenario():
        socket = await open_socket(token)
        refused = await call(socket, "ws_test.staff")
        assert refused["error"]["code"] == "ERR_PERMISSION_DENIED"
        assert refused["error"]["details"]["reason"] == "staff_only"
        await socket.disconnect()
        socket = await open_socket(staff_token)
        assert (await call(socket, "ws_test.staff"))["payload"] == {"staff": True}
        await socket.disconnect()

    run(scenario)


def test_public_methods_need_no_authentication(registered):
    async def hello(call: RpcCall):
        return {"user": call.conn.user}

    registered("ws_test.public", hello, public=True)

    async def scenario():
        socket = await open_socket()
        assert (await call(socket, "ws_test.public"))["payload"] == {"user": None}
        assert (await call(socket, "ping"))["error"]["code"] == "ERR_NOT_AUTHENTICATED"
        await socket.disconnect()

    run(scenario)


def test_each_frame_runs_in_a_ws_request_context(registered, org, member):
    async def whoami(call: RpcCall):
        ctx = context.current()
        return {
            "channel": ctx.channel,
            "path": ctx.path,
            "api_key": str(ctx.api_key_id),
            "id": ctx.request_id,
        }

    registered("ws_test.context", whoami)
    raw_key = key_for(org, member)
    key_id = str(member.api_keys.get().pk)

    async def scenario():
        socket = await open_socket(raw_key)
        first = (await call(socket, "ws_test.context"))["payload"]
        second = (await call(socket, "ws_test.context"))["payload"]
        assert first["channel"] == "ws" and first["path"] == "/ws"
        assert first["api_key"] == key_id
        assert first["id"] != second["id"]  # one request id per frame
        await socket.disconnect()

    run(scenario)
    assert context.current().channel == ""  # nothing leaked into the caller's context


def test_a_foreign_origin_is_refused(org):
    async def scenario():
        communicator = WebsocketCommunicator(
            application, "/ws", headers=[(b"origin", b"http://evil.example")]
        )
        connected, _ = await communicator.connect()
        assert not connected
        await communicator.disconnect()  # lets the denying consumer finish
        communicator = WebsocketCommunicator(
            application, "/ws", headers=[(b"origin", b"http://localhost:8000")]
        )
        connected, _ = await communicator.connect()
        assert connected
        await communicator.disconnect()

    run(scenario)
