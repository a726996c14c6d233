"""The agent a run names (``agent_for_run``): the same answer as the agents list, cached rows
included, and a change to an agent seen by the very next call."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Role
from agents.models import Agent, AgentShare
from agents.selectors.agents import AgentViewer, agent_for_run, agent_list
from core import db_threads
from tests.factories import UserFactory

_RUN_DB = db_threads.run_db


def _agent(org, owner, visibility) -> Agent:
    return Agent.objects.create(
        org=org, key=f"a-{uuid.uuid4().hex[:8]}", name="A", owner=owner, visibility=visibility
    )


@pytest.mark.django_db
def test_it_answers_exactly_what_the_agents_list_answers_for_every_viewer(org, owner, member):
    stranger = UserFactory()
    shared_with = UserFactory()
    agents = {v: _agent(org, owner, v) for v in Agent.Visibility.values}
    AgentShare.objects.create(agent=agents[Agent.Visibility.PRIVATE], user=shared_with)
    viewers = [
        AgentViewer(user=owner, role=Role.OWNER),
        AgentViewer(user=member, role=Role.MEMBER),
        AgentViewer(user=shared_with, role=Role.MEMBER),
        AgentViewer(user=stranger, role=Role.VIEWER),
        AgentViewer(user=None, role=Role.MEMBER),
        AgentViewer(user=None, role=Role.MEMBER, bound_agent_id=agents[Agent.Visibility.PRIVATE].pk),
        AgentViewer(user=None, role=Role.MEMBER, bound_agent_id=uuid.uuid4()),
    ]
    private_of_member = _agent(org, member, Agent.Visibility.PRIVATE)
    for viewer in viewers:
        for agent in [*agents.values(), private_of_member]:
            expected = agent_list(org=org, viewer=viewer).filter(pk=agent.pk).exists()
            for _ in range(2):  # read from the database, then from the cache
                by_key = agent_for_run(org=org, viewer=viewer, key=agent.key)
                by_id = agent_for_run(org=org, viewer=viewer, agent_id=agent.pk)
                found = (by_key is not None, by_id is not None)
                assert found == (expected, expected), (viewer, agent.visibility)
    assert agent_for_run(org=org, viewer=viewers[0], key="no-such-agent") is None


@pytest.mark.django_db
def test_a_cached_row_costs_no_query_and_an_edit_is_seen_at_once(org, owner):
    viewer = AgentViewer(user=owner, role=Role.OWNER)
    agent = _agent(org, owner, Agent.Visibility.ORG)
    first = agent_for_run(org=org, viewer=viewer, key=agent.key)
    with CaptureQueriesContext(connection) as queries:
        again = agent_for_run(org=org, viewer=viewer, key=agent.key)
    assert len(queries) == 0 and again.pk == first.pk and again.org == org

    agent.model = "edited-model"
    agent.save()
    assert agent_for_run(org=org, viewer=viewer, key=agent.key).model == "edited-model"
    agent.delete()
    assert agent_for_run(org=org, viewer=viewer, key=agent.key) is None


@pytest.mark.django_db
def test_the_cache_can_be_turned_off(org, owner, settings):
    settings.AGENT_CACHE_SECONDS = 0
    viewer = AgentViewer(user=owner, role=Role.OWNER)
    agent = _agent(org, owner, Agent.Visibility.ORG)
    agent_for_run(org=org, viewer=viewer, key=agent.key)
    Agent.objects.filter(pk=agent.pk).update(model="changed-without-a-signal")
    assert agent_for_run(org=org, viewer=viewer, key=agent.key).model == "changed-without-a-signal"


def _aagent_for_run(monkeypatch, **kwargs):
    """``aagent_for_run`` on a loop of its own, with its pool-thread reads recorded (the test's
    rows are committed: a loop's database connection is not the test's)."""
    import asyncio

    from django.conf import settings

    from agents.selectors.agents import aagent_for_run
    from core import aredis

    threaded = []

    original = _RUN_DB

    async def recorded(fn, /, *args, **kw):
        threaded.append(fn.__name__)
        return await original(fn, *args, **kw)

    monkeypatch.setattr(db_threads, "run_db", recorded)

    call = kwargs.pop("_call", None)

    async def go():
        try:
            return await (call() if call is not None else aagent_for_run(**kwargs))
        finally:
            if "LOCATION" in settings.CACHES["default"]:  # Redis: close this loop's client
                await aredis.client().aclose()

    return asyncio.run(go()), threaded


@pytest.mark.django_db(transaction=True)
def test_from_the_loop_it_answers_what_agent_for_run_answers_reading_a_thread_only_when_it_must(
    org, owner, member, monkeypatch
):
    shared_with = UserFactory()
    agents = {v: _agent(org, owner, v) for v in Agent.Visibility.values}
    AgentShare.objects.create(agent=agents[Agent.Visibility.PRIVATE], user=shared_with)
    viewers = [
        AgentViewer(user=owner, role=Role.OWNER),
        AgentViewer(user=member, role=Role.MEMBER),
        AgentViewer(user=shared_with, role=Role.MEMBER),
        AgentViewer(user=None, role=Role.MEMBER, bound_agent_id=uuid.uuid4()),
    ]
    for viewer in viewers:
        for agent in agents.values():
            expected = agent_for_run(org=org, viewer=viewer, key=agent.key)  # now cached
            found, threaded = _aagent_for_run(monkeypatch, org=org, viewer=viewer, key=agent.key)
            assert (found is not None) == (expected is not None), (viewer, agent.visibility)
            if found is not None:
                assert found.pk == agent.pk and found.org is org
            needs_shares = agent.visibility == Agent.Visibility.PRIVATE and viewer.user in (
                member,
                shared_with,
            )
            assert threaded == (["agent_for_run"] if needs_shares else []), (viewer, agent.visibility)


@pytest.mark.django_db(transaction=True)
def test_from_the_loop_a_row_not_cached_is_read_on_a_thread(org, owner, monkeypatch, settings):
    agent = _agent(org, owner, Agent.Visibility.ORG)
    viewer = AgentViewer(user=owner, role=Role.OWNER)

    first, threaded_first = _aagent_for_run(monkeypatch, org=org, viewer=viewer, agent_id=agent.pk)
    settings.AGENT_CACHE_SECONDS = 0
    off, threaded_off = _aagent_for_run(monkeypatch, org=org, viewer=viewer, agent_id=agent.pk)

    assert first.pk == agent.pk and threaded_first == ["_agent_row"]
    assert off.pk == agent.pk and threaded_off == ["agent_for_run"]


@pytest.mark.django_db(transaction=True)
def test_from_the_loop_a_burst_that_misses_the_cache_reads_the_row_once(org, owner, monkeypatch):
    import asyncio

    from agents import lookup_cache
    from agents.selectors.agents import aagent_for_run

    agent = _agent(org, owner, Agent.Visibility.ORG)
    viewer = AgentViewer(user=owner, role=Role.OWNER)
    agent_for_run(org=org, viewer=viewer, key=agent.key)  # cached, then invalidated
    lookup_cache.invalidate()

    async def burst():
        return await asyncio.gather(
            *(aagent_for_run(org=org, viewer=viewer, key=agent.key) for _ in range(8))
        )

    found, threaded = _aagent_for_run(monkeypatch, org=org, viewer=viewer, key=agent.key, _call=burst)
    again, threaded_again = _aagent_for_run(monkeypatch, org=org, viewer=viewer, key=agent.key)

    assert threaded == ["_agent_row"]  # one read for the eight runs
    assert [row.pk for row in found] == [agent.pk] * 8 and all(row.org is org for row in found)
    assert len({id(row) for row in found}) == 8  # each run its own row
    assert again.pk == agent.pk and threaded_again == []  # and the row is cached again


@pytest.mark.django_db(transaction=True)
def test_under_the_generation_its_request_read_a_run_takes_this_processs_copy_of_the_row(
    org, owner, monkeypatch
):
    """A request whose key lookup read the agents' generation (``core.aredis.adopt_reads``) gets
    the row this process kept under it, without a round trip; an edit (a new generation), no
    generation at all, or one read too long ago go to the shared cache as before."""
    import asyncio

    from django.conf import settings
    from django.core.cache import cache

    from agents import lookup_cache
    from agents.selectors.agents import aagent_for_run
    from core import aredis

    agent = _agent(org, owner, Agent.Visibility.ORG)
    viewer = AgentViewer(user=owner, role=Role.OWNER)
    agent_for_run(org=org, viewer=viewer, key=agent.key)  # in the shared cache
    round_trips = []
    real_read = aredis.cache_get_many_and_count

    async def counted(keys, counter=None):
        round_trips.append(keys)
        return await real_read(keys, counter)

    monkeypatch.setattr(aredis, "cache_get_many_and_count", counted)

    def generation():
        return cache.get(lookup_cache.GENERATION_KEY)

    async def run_with(read):
        try:
            aredis.adopt_reads(read)
            return await aagent_for_run(org=org, viewer=viewer, key=agent.key)
        finally:
            if "LOCATION" in settings.CACHES["default"]:  # Redis: close this loop's client
                await aredis.client().aclose()

    first = asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    assert len(round_trips) == 1 and first.pk == agent.pk  # read once, and kept
    second = asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    third = asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    assert len(round_trips) == 1  # no round trip of their own
    assert second.pk == third.pk == agent.pk and second is not third and second.org is org  # copies
    second.name = "Changed by a run"
    fourth = asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    assert fourth.name == agent.name and len(round_trips) == 1  # the kept row is not the runs' rows
    asyncio.run(run_with(None))  # no generation read with the key: the shared cache
    assert len(round_trips) == 2

    agent.name = "Renamed"
    agent.save()  # bumps the generation
    renamed = asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    assert len(round_trips) == 3 and renamed.name == "Renamed"

    monkeypatch.setattr(aredis, "READ_WITH_KEY_SECONDS", -1.0)  # read too long ago for this request
    asyncio.run(run_with({lookup_cache.GENERATION_KEY: generation()}))
    assert len(round_trips) == 4
