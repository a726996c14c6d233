"""Job progress over server-sent events, read from a real ASGI server (Daphne in a subprocess).

Two deliveries are covered: the embedded default, where the server's in-memory channel layer
cannot hear this process and the stream finds changes by re-reading the database, and Redis,
where the change is pushed through the channel layer (the server's polling is made too slow to
deliver in time, so only the push can).
"""

from __future__ import annotations

import os

import httpx
import pytest
from channels.layers import channel_layers

from core import realtime
from core.models import Job
from core.services import job_create, job_progress, job_start, job_succeed
from tests.core import views_for_tests  # noqa: F401  (registers the test.* job kinds)
from tests.support.asgi_server import open_event_stream, run_asgi_server, session_cookies

pytestmark = pytest.mark.django_db(transaction=True)

EVENT_TIMEOUT = 10.0  # far below the 30 s fallback of the Redis server: only a push is in time


@pytest.fixture
def asgi_server(transactional_db, tmp_path):
    """Daphne on the embedded default: in-memory channel layer, database polling every 0.1 s."""
    with run_asgi_server(log_dir=tmp_path, extra_env={"STREAM_POLL_SECONDS": "0.1"}) as server:
        yield server
        print(server.log())  # shown by pytest only when the test failed


@pytest.fixture
def redis_url(settings):
    url = settings.REDIS_URL or os.environ.get("REDIS_URL", "")
    assert url, "the redis marker promised a REDIS_URL"
    if not realtime.pushes_across_processes():
        # This process must publish where the server listens.
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": url, "socket_timeout": 15}],
                    "prefix": os.environ.get("CHANNEL_PREFIX", "asgi"),
                },
            }
        }
        channel_layers.backends.clear()
    assert realtime.pushes_across_processes()
    yield url
    channel_layers.backends.clear()


@pytest.fixture
def redis_asgi_server(transactional_db, tmp_path, redis_url):
    """Daphne on the Redis channel layer, with database polling and keep-alives at 30 s."""
    extra_env = {"STREAM_POLL_SECONDS": "30", "SSE_KEEPALIVE_SECONDS": "30"}
    with run_asgi_server(log_dir=tmp_path, redis_url=redis_url, extra_env=extra_env) as server:
        yield server
        print(server.log())


def stream_url(server, job) -> str:
    return f"{server.base_url}/api/v1/jobs/{job.pk}/stream"


def follow_job_to_the_end(server, job, user) -> list:
    """Drive the job from this process step by step and collect what the stream reports."""
    with open_event_stream(stream_url(server, job), cookies=session_cookies(user)) as stream:
        events = [stream.next_event(EVENT_TIMEOUT)]
        assert events[0].event == "job.progress"
        assert events[0].data["status"] == "pending"

        # Each change is made only once the previous one was seen, so none can be coalesced.
        assert job_start(job_id=job.pk) is not None
        events.append(stream.next_event(EVENT_TIMEOUT))
        assert events[-1].data["status"] == "running"

        for percent in (30, 60):
            assert job_progress(job_id=job.pk, percent=percent, message=f"at {percent}")
            events.append(stream.next_event(EVENT_TIMEOUT))
            assert events[-1].event == "job.progress"
            assert events[-1].data["percent"] == percent
            assert events[-1].data["message"] == f"at {percent}"

        assert job_succeed(job_id=job.pk, result={"rows": 7})
        events.append(stream.next_event(EVENT_TIMEOUT))
        stream.wait_closed(EVENT_TIMEOUT)
    return events


def assert_complete_run(events, job) -> None:
    assert [e.event for e in events] == ["job.progress"] * 4 + ["job.end"]
    assert all(e.data["id"] == str(job.pk) for e in events)
    percents = [e.data["percent"] for e in events]
    assert percents == [0, 0, 30, 60, 100]
    ids = [int(e.id) for e in events]
    assert ids == sorted(set(ids)), f"id: lines must increase, got {ids}"
    end = events[-1].data
    assert end["status"] == Job.Status.SUCCEEDED
    assert end["result"] == {"rows": 7}
    assert end["error"] is None


def test_progress_reaches_stream_by_polling_with_in_memory_layer(asgi_server, org, owner):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)

    events = follow_job_to_the_end(asgi_server, job, owner)

    assert_complete_run(events, job)


@pytest.mark.redis
def test_progress_is_pushed_to_stream_through_redis(redis_asgi_server, org, owner):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)

    events = follow_job_to_the_end(redis_asgi_server, job, owner)

    assert_complete_run(events, job)


@pytest.mark.redis
def test_redis_stream_survives_an_idle_wait_longer_than_the_redis_socket_timeout(
    transactional_db, tmp_path, redis_url, org, owner
):
    # redis-py gives sockets a 5 s read timeout; a stream waits on the channel layer for
    # SSE_KEEPALIVE_SECONDS between pushes, so 7 s here must neither break nor end the stream.
    extra_env = {"STREAM_POLL_SECONDS": "30", "SSE_KEEPALIVE_SECONDS": "7"}
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)
    with (
        run_asgi_server(log_dir=tmp_path, redis_url=redis_url, extra_env=extra_env) as server,
        open_event_stream(stream_url(server, job), cookies=session_cookies(owner)) as stream,
    ):
        assert stream.next_event(EVENT_TIMEOUT).data["status"] == "pending"
        stream.wait_keepalive(timeout=20.0)

        assert job_start(job_id=job.pk) is not None
        assert stream.next_event(EVENT_TIMEOUT).data["status"] == "running"
        assert "Timeout reading" not in server.log()


def test_member_of_the_org_can_follow_the_stream(asgi_server, org, owner, member):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)
    with open_event_stream(stream_url(asgi_server, job), cookies=session_cookies(member)) as stream:
        assert stream.next_event(EVENT_TIMEOUT).data["id"] == str(job.pk)


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
def test_outsider_gets_404_envelope_from_stream(asgi_server, org, owner, outsider, accept):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)

    response = httpx.get(
        stream_url(asgi_server, job),
        cookies=session_cookies(outsider),
        headers={"Accept": accept},
        timeout=10.0,
    )

    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == "ERR_NOT_FOUND"
    assert str(job.pk) not in response.text


def test_anonymous_gets_401_from_stream(asgi_server, org, owner):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)

    response = httpx.get(stream_url(asgi_server, job), headers={"Accept": "text/event-stream"}, timeout=10.0)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ERR_UNAUTHENTICATED"


def test_finished_job_replays_one_end_event_and_closes(asgi_server, org, owner):
    job = job_create(kind="test.steps", org=org, actor=owner, enqueue=False)
    job_start(job_id=job.pk)
    job_succeed(job_id=job.pk, result={"done": True})

    with open_event_stream(stream_url(asgi_server, job), cookies=session_cookies(owner)) as stream:
        event = stream.next_event(EVENT_TIMEOUT)
        stream.wait_closed(EVENT_TIMEOUT)

    assert event.event == "job.end"
    assert event.id == "1"
    assert event.data["status"] == Job.Status.SUCCEEDED
    assert event.data["percent"] == 100
    assert event.data["result"] == {"done": True}
