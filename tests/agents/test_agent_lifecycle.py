"""The agent lifecycle: start, stop, restart and heartbeat through sessions, API keys and the
agent's own key (which reaches only its agent), the computed ``online`` state with time travel,
and the status stream over server-sent events from a real ASGI server.

Stream deliveries covered: the embedded default (in-memory channel layer; the server finds
changes made by this process by re-reading the database) and Redis (the change is pushed; the
server's re-reading is made too slow to deliver in time, so only the push can).
"""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.test import Client
from django.utils import timezone

from accounts.models import AuditLog, Role
from accounts.services.keys import api_key_create
from agents.models import Agent, AgentShare
from agents.selectors.agents import agent_online
from agents.services.agents import agent_delete, agent_heartbeat, agent_restart, agent_start, agent_stop
from tests.accounts.factories_orgs import client_with_role, user_with_role
from tests.agents.test_agents import URL, detail, make_agent
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.core.test_sse import redis_url  # noqa: F401  (fixture)
from tests.support.asgi_server import open_event_stream, run_asgi_server, session_cookies

LIFECYCLE = ["/start", "/stop", "/restart", "/heartbeat"]
EVENT_TIMEOUT = 10.0


def agent_token(org, owner, agent, **fields) -> str:
    _key, raw = api_key_create(org=org, actor=owner, name="bot", kind="agent", agent_id=agent.pk, **fields)
    return raw


def agent_client(raw: str, header: str = "X-Agent-Token") -> Client:
    if header == "Authorization":
        return Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return Client(HTTP_X_AGENT_TOKEN=raw)


# --- start, stop, restart ----------------------------------------------------------------------


@pytest.mark.django_db
def test_start_and_stop_set_the_status_and_are_audited(member_client, org, owner, member):
    agent = make_agent(org, owner)

    started = member_client.post(detail(agent, "/start"))
    stopped = member_client.post(detail(agent, "/stop"))

    assert started.status_code == 200 and stopped.status_code == 200
    assert started.json()["status"] == "running"
    assert started.json()["online"] is False  # running, but no heartbeat yet
    assert started.json()["offline_after_seconds"] == 300
    assert stopped.json()["status"] == "stopped"
    logs = AuditLog.objects.filter(org=org, action__in=["agent.started", "agent.stopped"]).order_by(
        "created_at"
    )
    assert [(log.action, log.actor) for log in logs] == [("agent.started", member), ("agent.stopped", member)]
    assert logs[0].changes == {"status": ["stopped", "running"]}


@pytest.mark.django_db
def test_starting_a_running_agent_changes_nothing(member_client, org, owner):
    agent = make_agent(org, owner)
    member_client.post(detail(agent, "/start"))

    assert member_client.post(detail(agent, "/start")).json()["status"] == "running"

    assert AuditLog.objects.filter(action="agent.started").count() == 1


@pytest.mark.django_db
def test_restart_runs_the_agent_and_is_audited_every_time(member_client, org, owner):
    agent = make_agent(org, owner)

    for _ in range(2):
        assert member_client.post(detail(agent, "/restart")).json()["status"] == "running"

    assert AuditLog.objects.filter(action="agent.restarted").count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", LIFECYCLE)
@pytest.mark.parametrize(("role", "allowed"), [(Role.VIEWER, False), (Role.MEMBER, True), (Role.ADMIN, True)])
def test_lifecycle_needs_member(org, owner, suffix, role, allowed):
    agent = make_agent(org, owner)
    _user, client = client_with_role(org, role)

    response = client.post(detail(agent, suffix))

    if allowed:
        assert response.status_code == 200
    else:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", LIFECYCLE)
def test_lifecycle_of_an_invisible_agent_answers_404(org, owner, other_member_client, suffix):
    agent = make_agent(org, owner, visibility="private")

    assert_envelope(other_member_client.post(detail(agent, suffix)), 404)

    assert Agent.objects.get(pk=agent.pk).status == "stopped"


@pytest.fixture
def other_member_client(org):
    return client_for(user_with_role(org, Role.MEMBER))


@pytest.mark.django_db
def test_anonymous_lifecycle_calls_get_401(anon_client, org, owner):
    agent = make_agent(org, owner)

    assert_envelope(anon_client.post(detail(agent, "/heartbeat")), 401)


# --- heartbeats and the online state ------------------------------------------------------------


@pytest.mark.django_db
def test_a_heartbeat_marks_the_agent_running_and_online(member_client, org, owner):
    agent = make_agent(org, owner)

    response = member_client.post(detail(agent, "/heartbeat"))

    data = response.json()
    assert data["status"] == "running" and data["online"] is True
    assert data["last_heartbeat_at"] is not None
    agent.refresh_from_db()
    assert agent.last_heartbeat_at is not None
    assert member_client.get(detail(agent)).json()["online"] is True


@pytest.mark.django_db
def test_only_the_heartbeat_that_starts_the_agent_is_audited(member_client, org, owner):
    agent = make_agent(org, owner)

    for _ in range(3):
        member_client.post(detail(agent, "/heartbeat"))

    starts = AuditLog.objects.filter(action="agent.started")
    assert starts.count() == 1
    assert starts.get().after == {"status": "running", "by": "heartbeat"}


@pytest.mark.django_db
def test_an_agent_without_heartbeats_goes_offline_after_the_timeout(member_client, org, owner, settings):
    agent = make_agent(org, owner)
    member_client.post(detail(agent, "/heartbeat"))
    now = timezone.now()

    Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=now - timedelta(seconds=299))
    assert member_client.get(detail(agent)).json()["online"] is True

    Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=now - timedelta(seconds=301))
    data = member_client.get(detail(agent)).json()
    assert data["online"] is False
    assert data["status"] == "running"  # the desired state is unchanged; only liveness lapsed

    settings.AGENT_OFFLINE_AFTER = 600
    assert member_client.get(detail(agent)).json()["online"] is True


@pytest.mark.django_db
def test_a_stopped_agent_is_never_online(org, owner):
    agent = make_agent(org, owner)
    agent_heartbeat(agent=agent, actor=owner)

    agent = agent_stop(agent=agent, actor=owner)

    assert agent.last_heartbeat_at is not None
    assert agent_online(agent) is False


@pytest.mark.django_db
def test_online_is_computed_against_the_given_time(org, owner):
    agent = agent_heartbeat(agent=make_agent(org, owner), actor=owner)

    assert agent_online(agent, now=agent.last_heartbeat_at + timedelta(seconds=10))
    assert not agent_online(agent, now=agent.last_heartbeat_at + timedelta(seconds=300))


# --- the agent's own key -----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["X-Agent-Token", "Authorization"])
@pytest.mark.parametrize("suffix", LIFECYCLE)
def test_an_agent_key_drives_its_own_agent(org, owner, header, suffix):
    agent = make_agent(org, owner)
    client = agent_client(agent_token(org, owner, agent), header)

    response = client.post(detail(agent, suffix))

    assert response.status_code == 200, response.content
    assert response.json()["id"] == str(agent.pk)


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", LIFECYCLE)
def test_an_agent_key_gets_404_for_another_agent(org, owner, suffix):
    own = make_agent(org, owner)
    other = make_agent(org, owner)
    client = agent_client(agent_token(org, owner, own))

    assert_envelope(client.post(detail(other, suffix)), 404)

    assert Agent.objects.get(pk=other.pk).status == "stopped"
    assert Agent.objects.get(pk=other.pk).last_heartbeat_at is None


@pytest.mark.django_db
def test_an_agent_key_sees_only_its_own_agent(org, owner):
    own = make_agent(org, owner)
    other = make_agent(org, owner)
    client = agent_client(agent_token(org, owner, own))

    listed = client.get(URL).json()
    assert [item["id"] for item in listed["items"]] == [str(own.pk)]
    assert client.get(detail(own)).status_code == 200
    assert_envelope(client.get(detail(other)), 404)
    assert client.get(detail(own, "/system-prompt-preview")).status_code == 200
    assert client.get(detail(own, "/export")).status_code == 200


@pytest.mark.django_db
def test_an_agent_key_may_not_change_agents(org, owner):
    own = make_agent(org, owner)
    client = agent_client(agent_token(org, owner, own))
    calls = [
        client.post(URL, {"key": "new", "name": "n", "model": "m"}, content_type="application/json"),
        client.patch(detail(own), {"name": "mine now"}, content_type="application/json"),
        client.delete(detail(own)),
        client.post(detail(own, "/duplicate")),
        client.post(detail(own, "/publish")),
        client.get(detail(own, "/shares")),
        client.post(URL + "/import"),
    ]

    for response in calls:
        assert_envelope(response, 403, "ERR_AGENT_KEY_NOT_ALLOWED")
    assert Agent.objects.count() == 1
    assert Agent.objects.get().name == "Helper"


@pytest.mark.django_db
def test_an_agent_key_of_a_viewer_role_cannot_drive_the_lifecycle(org, owner):
    agent = make_agent(org, owner)
    client = agent_client(agent_token(org, owner, agent, role=Role.VIEWER))

    assert_envelope(client.post(detail(agent, "/heartbeat")), 403, "ERR_ROLE_REQUIRED")


@pytest.mark.django_db
def test_an_agent_key_of_another_org_is_404(org, owner, other_org, outsider):
    agent = make_agent(org, owner)
    foreign = make_agent(other_org, outsider)
    client = agent_client(agent_token(other_org, outsider, foreign))

    assert_envelope(client.post(detail(agent, "/heartbeat")), 404)


@pytest.mark.django_db
def test_a_heartbeat_of_an_agent_deleted_meanwhile_answers_404(org, owner):
    agent = make_agent(org, owner)
    Agent.objects.filter(pk=agent.pk).delete()

    with pytest.raises(Exception) as caught:
        agent_heartbeat(agent=agent, actor=owner)

    assert getattr(caught.value, "status_code", None) == 404


# --- the status stream -------------------------------------------------------------------------


def stream_url(server) -> str:
    return f"{server.base_url}{URL}/stream"


@pytest.fixture
def asgi_server(transactional_db, tmp_path):
    """Daphne on the embedded default: in-memory channel layer, database re-reads every 0.1 s."""
    with run_asgi_server(log_dir=tmp_path, extra_env={"STREAM_POLL_SECONDS": "0.1"}) as server:
        yield server
        print(server.log())


@pytest.fixture
def redis_asgi_server(transactional_db, tmp_path, redis_url):  # noqa: F811
    extra_env = {"STREAM_POLL_SECONDS": "30", "SSE_KEEPALIVE_SECONDS": "30"}
    with run_asgi_server(log_dir=tmp_path, redis_url=redis_url, extra_env=extra_env) as server:
        yield server
        print(server.log())


def assert_increasing_ids(events) -> None:
    ids = [int(event.id) for event in events]
    assert ids == sorted(set(ids)), f"id: lines must increase, got {ids}"


def follow_changes(server, org, owner, member):
    """Drive one agent through its life from this process; collect what the stream reports."""
    visible = make_agent(org, owner, key="visible", name="Visible")
    make_agent(org, owner, key="hidden", visibility="private")
    with open_event_stream(stream_url(server), cookies=session_cookies(member)) as stream:
        snapshot = stream.next_event(EVENT_TIMEOUT)
        events = [snapshot]
        assert snapshot.event == "snapshot"
        assert [row["key"] for row in snapshot.data["agents"]] == ["visible"]
        assert snapshot.data["offline_after_seconds"] == 300

        # Each change is made only once the previous one was seen, so none can be coalesced.
        agent_start(agent=visible, actor=owner)
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].event == "agent.status"
        assert events[-1].data["status"] == "running" and events[-1].data["online"] is False

        agent_heartbeat(agent=visible, actor=owner)
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].data["online"] is True
        assert events[-1].data["last_heartbeat_at"] is not None

        agent_stop(agent=visible, actor=owner)
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].data["status"] == "stopped" and events[-1].data["online"] is False

        created = make_agent(org, owner, key="newcomer", name="Newcomer")
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].event == "agent.status" and events[-1].data["key"] == "newcomer"

        agent_delete(agent=created, actor=owner)
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].event == "agent.removed" and events[-1].data["id"] == str(created.pk)
    assert_increasing_ids(events)
    return events


def test_status_changes_reach_the_stream_by_re_reading_with_in_memory_layer(asgi_server, org, owner, member):
    follow_changes(asgi_server, org, owner, member)


@pytest.mark.redis
def test_status_changes_are_pushed_to_the_stream_through_redis(redis_asgi_server, org, owner, member):
    events = follow_changes(redis_asgi_server, org, owner, member)

    assert [event.data.get("change") for event in events[1:]] == [
        "started",
        "heartbeat",
        "stopped",
        "created",
        "deleted",
    ]


@pytest.mark.redis
def test_a_restart_of_a_running_agent_is_pushed_although_nothing_changed(
    redis_asgi_server, org, owner, member
):
    agent = agent_start(agent=make_agent(org, owner), actor=owner)
    with open_event_stream(stream_url(redis_asgi_server), cookies=session_cookies(member)) as stream:
        assert stream.next_event(EVENT_TIMEOUT).data["agents"][0]["status"] == "running"

        agent_restart(agent=agent, actor=owner)

        event = stream.next_event(EVENT_TIMEOUT)
    assert event.event == "agent.status" and event.data["change"] == "restarted"


def test_an_agent_that_stops_beating_is_reported_offline_at_the_next_re_read(asgi_server, org, owner, member):
    agent = agent_heartbeat(agent=make_agent(org, owner), actor=owner)
    with open_event_stream(stream_url(asgi_server), cookies=session_cookies(member)) as stream:
        assert stream.next_event(EVENT_TIMEOUT).data["agents"][0]["online"] is True

        # Time travel, without any service call (a lapse is no write, so nothing is published).
        Agent.objects.filter(pk=agent.pk).update(last_heartbeat_at=timezone.now() - timedelta(hours=1))

        event = stream.next_event(EVENT_TIMEOUT)
    assert event.event == "agent.status"
    assert event.data["online"] is False and event.data["status"] == "running"


def test_sharing_a_private_agent_brings_it_into_the_members_stream(asgi_server, org, owner, member):
    agent = make_agent(org, owner, key="secret", visibility="private")
    with open_event_stream(stream_url(asgi_server), cookies=session_cookies(member)) as stream:
        assert stream.next_event(EVENT_TIMEOUT).data["agents"] == []

        AgentShare.objects.create(agent=agent, user=member)
        assert stream.next_event(EVENT_TIMEOUT).data["key"] == "secret"

        AgentShare.objects.filter(agent=agent).delete()
        event = stream.next_event(EVENT_TIMEOUT)
    assert event.event == "agent.removed" and event.data["id"] == str(agent.pk)


def test_the_stream_sends_keepalives_when_idle(transactional_db, tmp_path, org, owner, member):
    make_agent(org, owner)
    extra_env = {"STREAM_POLL_SECONDS": "0.1", "SSE_KEEPALIVE_SECONDS": "0.5"}
    with (
        run_asgi_server(log_dir=tmp_path, extra_env=extra_env) as server,
        open_event_stream(stream_url(server), cookies=session_cookies(member)) as stream,
    ):
        assert stream.next_event(EVENT_TIMEOUT).event == "snapshot"
        stream.wait_keepalive(timeout=10.0)


def test_a_member_removed_mid_stream_gets_an_error_and_the_end(
    transactional_db, tmp_path, org, owner, member
):
    from accounts.models import Membership

    extra_env = {"STREAM_POLL_SECONDS": "0.1", "SSE_KEEPALIVE_SECONDS": "0.5"}
    with (
        run_asgi_server(log_dir=tmp_path, extra_env=extra_env) as server,
        open_event_stream(stream_url(server), cookies=session_cookies(member)) as stream,
    ):
        assert stream.next_event(EVENT_TIMEOUT).event == "snapshot"
        Membership.objects.filter(org=org, user=member).delete()

        event = stream.next_event(EVENT_TIMEOUT)
        stream.wait_closed(EVENT_TIMEOUT)
    assert event.event == "error" and event.data["code"] == "ERR_PERMISSION_DENIED"


def test_an_agent_key_follows_only_its_own_agent(asgi_server, org, owner):
    own = make_agent(org, owner, key="own")
    other = make_agent(org, owner, key="other")
    raw = agent_token(org, owner, own)
    timeout = httpx.Timeout(10.0, read=60.0)
    with (
        httpx.Client(timeout=timeout, headers={"X-Agent-Token": raw}) as client,
        client.stream("GET", stream_url(asgi_server), headers={"Accept": "text/event-stream"}) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines) == "id: 1"
        assert next(lines) == "event: snapshot"
        data = next(lines)
    assert '"key":"own"' in data and str(other.pk) not in data


def test_the_stream_of_an_outsider_shows_none_of_the_orgs_agents(asgi_server, org, owner, outsider):
    make_agent(org, owner, visibility="public")

    with open_event_stream(stream_url(asgi_server), cookies=session_cookies(outsider)) as stream:
        assert stream.next_event(EVENT_TIMEOUT).data["agents"] == []


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
def test_anonymous_gets_a_401_envelope_from_the_stream(asgi_server, accept):
    response = httpx.get(stream_url(asgi_server), headers={"Accept": accept}, timeout=10.0)

    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "ERR_UNAUTHENTICATED"


def test_a_scoped_key_without_agents_read_gets_403(asgi_server, org, owner):
    _key, raw = api_key_create(org=org, actor=owner, name="k", scopes=["boards:read"])

    response = httpx.get(
        stream_url(asgi_server),
        headers={"Authorization": f"Bearer {raw}", "Accept": "text/event-stream"},
        timeout=10.0,
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ERR_SCOPE_REQUIRED"
