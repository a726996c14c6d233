"""The per-agent knowledge graph: upsert by normalised name and alias, relations, traverse,
merge, duplicates, export (``/api/v1/agents/{id}/kg/...``)."""

from __future__ import annotations

import uuid

import pytest

from accounts.models import AuditLog, Role
from knowledge.memory.models import Entity, EntityAlias, Relation
from knowledge.memory.normalize import normalize_name, normalize_relation_type
from knowledge.memory.services.graph import entity_upsert, relation_upsert
from tests.accounts.factories_orgs import client_with_role
from tests.core.test_errors import assert_envelope

from .conftest import make_agent


def kg(agent, rest):
    return f"/api/v1/agents/{agent.pk}/kg/{rest}"


def add(client, agent, name, **fields):
    return client.post(kg(agent, "entities"), {"name": name, **fields}, format="json")


def relate(client, agent, source, target, type, **fields):
    body = {"source": str(source.pk), "target": str(target.pk), "type": type, **fields}
    return client.post(kg(agent, "relations"), body, format="json")


def node(agent, name, **fields):
    return entity_upsert(agent=agent, actor=None, name=name, **fields)[0]


def edge(agent, source, target, type="knows", **fields):
    return relation_upsert(agent=agent, actor=None, source=source, target=target, type=type, **fields)[0]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ACME, Inc.", "acme inc"),
        ("  New   York ", "new york"),
        ("Jean-Luc Picard", "jean luc picard"),
        ("A.C.M.E.", "ACME"),
        ("Café Zürich", "cafe zurich"),
    ],
)
def test_normalised_names_ignore_case_spaces_punctuation_and_accents(a, b):
    assert normalize_name(a) == normalize_name(b)


def test_relation_types_become_snake_case():
    assert normalize_relation_type("Works For") == "works_for"
    assert normalize_relation_type("located-in") == "located_in"


# --- entities ----------------------------------------------------------------------------------


def test_post_creates_then_upserts_by_normalised_name(agent, member_client):
    first = add(member_client, agent, "ACME Inc.", type="company", aliases=["Acme Corporation"])
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["name"] == "ACME Inc." and body["normalized_name"] == "acme inc"
    assert body["aliases"] == ["Acme Corporation"] and body["relations"] == []

    again = add(member_client, agent, "acme   inc", description="Makes anvils.")
    assert again.status_code == 200, again.content
    assert again.json()["id"] == body["id"]
    assert again.json()["description"] == "Makes anvils."
    assert again.json()["type"] == "company"  # an empty type keeps the stored one
    assert Entity.objects.filter(agent=agent).count() == 1
    assert AuditLog.objects.filter(action="kg.entity.created").count() == 1
    assert AuditLog.objects.filter(action="kg.entity.updated").count() == 1


def test_an_alias_matches_and_a_new_spelling_becomes_an_alias(agent, member_client):
    created = add(member_client, agent, "International Business Machines", aliases=["IBM"]).json()
    by_alias = add(member_client, agent, "I.B.M.", type="company")
    assert by_alias.status_code == 200
    assert by_alias.json()["id"] == created["id"]
    assert by_alias.json()["name"] == "International Business Machines"
    assert by_alias.json()["aliases"] == ["IBM"]  # "I.B.M." normalises to the alias already there
    other = add(member_client, agent, "Big Blue", aliases=["ibm"])
    assert other.status_code == 200  # one of its aliases is a known alias: same entity
    assert other.json()["aliases"] == ["IBM", "Big Blue"]
    assert set(EntityAlias.objects.filter(entity_id=created["id"]).values_list("key", flat=True)) == {
        "ibm",
        "big blue",
    }


def test_entity_names_need_a_letter_or_digit(agent, member_client):
    assert_envelope(add(member_client, agent, "..."), 400)
    assert_envelope(add(member_client, agent, ""), 400)
    assert_envelope(add(member_client, agent, "x", metadata=[1]), 400)
    assert Entity.objects.count() == 0


def test_list_filters_by_type_and_q_in_names_and_aliases(agent, member_client):
    node(agent, "Alice", type="person", aliases=["Ally"])
    node(agent, "Bob", type="person")
    node(agent, "Paris", type="place")
    people = member_client.get(kg(agent, "entities?type=Person")).json()
    assert [e["name"] for e in people["items"]] == ["Alice", "Bob"]
    assert people["total"] == 2
    assert [e["name"] for e in member_client.get(kg(agent, "entities?q=ally")).json()["items"]] == ["Alice"]
    assert [e["name"] for e in member_client.get(kg(agent, "entities?q=par")).json()["items"]] == ["Paris"]
    page = member_client.get(kg(agent, "entities?limit=1&offset=1")).json()
    assert page["total"] == 3 and [e["name"] for e in page["items"]] == ["Bob"]


def test_detail_shows_relations_both_ways_and_delete_removes_them(agent, member_client):
    alice, bob, acme = node(agent, "Alice"), node(agent, "Bob"), node(agent, "Acme")
    edge(agent, alice, acme, "works_for")
    edge(agent, bob, alice, "knows")
    detail = member_client.get(kg(agent, f"entities/{alice.pk}")).json()
    assert {(r["source"]["name"], r["type"], r["target"]["name"]) for r in detail["relations"]} == {
        ("Alice", "works_for", "Acme"),
        ("Bob", "knows", "Alice"),
    }
    assert member_client.delete(kg(agent, f"entities/{alice.pk}")).status_code == 204
    assert not Relation.objects.filter(agent=agent).exists()
    assert_envelope(member_client.get(kg(agent, f"entities/{alice.pk}")), 404)
    assert AuditLog.objects.filter(action="kg.entity.deleted", entity_id=str(alice.pk)).exists()


# --- relations ---------------------------------------------------------------------------------


def test_relations_are_unique_per_source_target_and_type(agent, member_client):
    alice, acme = node(agent, "Alice"), node(agent, "Acme")
    first = relate(member_client, agent, alice, acme, "Works for", weight=0.5)
    assert first.status_code == 201, first.content
    assert first.json()["type"] == "works_for" and first.json()["weight"] == 0.5
    again = relate(member_client, agent, alice, acme, "works_for", weight=0.9, description="since 2020")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Relation.objects.get().weight == 0.9
    reverse = relate(member_client, agent, acme, alice, "works_for")
    assert reverse.status_code == 201  # the other direction is another edge
    by_name = member_client.post(
        kg(agent, "relations"),
        {"source_name": "alice", "target_name": "ACME", "type": "likes"},
        format="json",
    )
    assert by_name.status_code == 201, by_name.content
    assert Relation.objects.count() == 3


def test_bad_relations_answer_400_or_404(agent, foreign_agent, member_client):
    alice, acme = node(agent, "Alice"), node(agent, "Acme")
    theirs = node(foreign_agent, "Eve")
    other_agent = make_agent(agent.org, name="Other")
    sibling = node(other_agent, "Carol")
    assert_envelope(relate(member_client, agent, alice, alice, "knows"), 400)
    assert_envelope(relate(member_client, agent, alice, acme, "!!!"), 400)
    assert_envelope(member_client.post(kg(agent, "relations"), {"type": "x"}, format="json"), 400)
    both = {"source": str(alice.pk), "source_name": "Alice", "target": str(acme.pk), "type": "x"}
    assert_envelope(member_client.post(kg(agent, "relations"), both, format="json"), 400)
    assert_envelope(relate(member_client, agent, alice, theirs, "knows"), 404)
    assert_envelope(relate(member_client, agent, alice, sibling, "knows"), 404)
    unknown = {"source_name": "Nobody", "target": str(acme.pk), "type": "x"}
    assert_envelope(member_client.post(kg(agent, "relations"), unknown, format="json"), 404)
    assert Relation.objects.count() == 0


# --- traverse ----------------------------------------------------------------------------------


@pytest.fixture
def chain(agent):
    """a → b → c → d → e, plus a cycle c → a and a side edge b -likes-> x."""
    names = {n: node(agent, n.upper()) for n in "abcdex"}
    for s, t in ["ab", "bc", "cd", "de", "ca"]:
        edge(agent, names[s], names[t], "next")
    edge(agent, names["b"], names["x"], "likes")
    return names


def traverse(client, agent, **body):
    return client.post(kg(agent, "traverse"), body, format="json")


def test_traverse_respects_depth_and_visits_each_node_once(agent, chain, member_client):
    one = traverse(member_client, agent, entity_id=str(chain["a"].pk), depth=1).json()
    assert {(n["name"], n["depth"]) for n in one["nodes"]} == {("A", 0), ("B", 1), ("C", 1)}
    three = traverse(member_client, agent, name="a", depth=3).json()
    depths = {n["name"]: n["depth"] for n in three["nodes"]}
    assert depths == {"A": 0, "B": 1, "C": 1, "X": 2, "D": 2, "E": 3}
    assert len(three["nodes"]) == len(depths)  # the cycle a → b → c → a adds no second visit
    assert len({e["id"] for e in three["edges"]}) == len(three["edges"])
    zero = traverse(member_client, agent, name="A", depth=0).json()
    assert [n["name"] for n in zero["nodes"]] == ["A"] and zero["edges"] == []


def test_traverse_follows_direction_and_relation_types(agent, chain, member_client):
    out = traverse(member_client, agent, name="A", depth=2, direction="out").json()
    assert {n["name"] for n in out["nodes"]} == {"A", "B", "C", "X"}
    only_next = traverse(
        member_client, agent, name="A", depth=2, direction="out", relation_types=["Next"]
    ).json()
    assert {n["name"] for n in only_next["nodes"]} == {"A", "B", "C"}
    incoming = traverse(member_client, agent, name="C", depth=1, direction="in").json()
    assert {n["name"] for n in incoming["nodes"]} == {"C", "B"}


def test_traverse_refuses_depth_over_3_and_unknown_starts(agent, chain, member_client):
    assert_envelope(traverse(member_client, agent, name="A", depth=4), 400)
    assert_envelope(traverse(member_client, agent, depth=1), 400)
    assert_envelope(traverse(member_client, agent, name="A", entity_id=str(chain["a"].pk)), 400)
    assert_envelope(traverse(member_client, agent, name="nobody"), 404)
    assert_envelope(traverse(member_client, agent, entity_id=str(uuid.uuid4())), 404)


# --- merge, duplicates, export -----------------------------------------------------------------


def test_merge_repoints_relations_merges_aliases_and_is_atomic(agent, member_client):
    acme = node(agent, "Acme", type="company", aliases=["Acme Co"])
    dup = node(agent, "Acme Corporation", description="Anvils.", aliases=["ACME Corp"])
    alice, bob = node(agent, "Alice"), node(agent, "Bob")
    edge(agent, alice, dup, "works_for", weight=0.9)
    edge(agent, alice, acme, "works_for", weight=0.4)  # becomes a duplicate edge: higher weight kept
    edge(agent, dup, bob, "employs")
    edge(agent, dup, acme, "same_as")  # would become a self-loop: dropped

    response = member_client.post(
        kg(agent, f"entities/{dup.pk}/merge"), {"into": str(acme.pk)}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == str(acme.pk)
    assert body["aliases"] == ["Acme Co", "Acme Corporation", "ACME Corp"]
    assert body["description"] == "Anvils."
    assert not Entity.objects.filter(pk=dup.pk).exists()
    edges = {(r.source.name, r.type, r.target.name, r.weight) for r in Relation.objects.filter(agent=agent)}
    assert edges == {("Alice", "works_for", "Acme", 0.9), ("Acme", "employs", "Bob", 1.0)}
    # The merged name now finds the survivor.
    assert add(member_client, agent, "acme corporation").json()["id"] == str(acme.pk)
    assert AuditLog.objects.filter(action="kg.entity.merged", entity_id=str(acme.pk)).exists()


def test_merge_refuses_itself_and_other_agents_entities(agent, foreign_agent, member_client):
    acme = node(agent, "Acme")
    theirs = node(foreign_agent, "Acme")
    assert_envelope(
        member_client.post(kg(agent, f"entities/{acme.pk}/merge"), {"into": str(acme.pk)}, format="json"), 400
    )
    assert_envelope(
        member_client.post(kg(agent, f"entities/{acme.pk}/merge"), {"into": str(theirs.pk)}, format="json"),
        404,
    )
    assert_envelope(member_client.post(kg(agent, f"entities/{acme.pk}/merge"), {}, format="json"), 400)
    assert Entity.objects.filter(pk__in=[acme.pk, theirs.pk]).count() == 2


def test_duplicates_finds_alias_overlaps_contained_and_similar_names(agent, member_client):
    node(agent, "Acme Corporation")
    node(agent, "Acme")
    node(agent, "Acme Corporation", aliases=["ACME"])  # matched by name; the alias is another's name
    node(agent, "Globex")
    node(agent, "Globex Industries")
    node(agent, "Jonathan Smith")
    node(agent, "Jonathon Smith")
    node(agent, "Paris")
    items = member_client.get(kg(agent, "duplicates")).json()["items"]
    pairs = {(tuple(sorted(e["name"] for e in item["entities"])), item["reason"]) for item in items}
    assert (("Acme", "Acme Corporation"), "alias_overlap") in pairs
    assert (("Jonathan Smith", "Jonathon Smith"), "similar_name") in pairs
    assert (("Globex", "Globex Industries"), "contained") in pairs
    assert not any("Paris" in names for names, _ in pairs)
    assert items[0]["score"] >= items[-1]["score"]


def test_export_gives_nodes_and_edges(agent, member_client):
    a, b = node(agent, "A"), node(agent, "B")
    edge(agent, a, b)
    body = member_client.get(kg(agent, "export")).json()
    assert {n["name"] for n in body["nodes"]} == {"A", "B"}
    assert body["edges"] == [
        {
            "id": body["edges"][0]["id"],
            "source": str(a.pk),
            "target": str(b.pk),
            "type": "knows",
            "weight": 1.0,
        }
    ]
    assert body["truncated"] is False


# --- who may -----------------------------------------------------------------------------------


def test_the_member_owner_outsider_trio(
    org, agent, foreign_agent, owner_client, member_client, outsider_client
):
    entity = node(agent, "Alice")
    assert owner_client.get(kg(agent, f"entities/{entity.pk}")).status_code == 200
    assert member_client.get(kg(agent, f"entities/{entity.pk}")).status_code == 200
    for response in (
        outsider_client.get(kg(agent, "entities")),
        outsider_client.get(kg(agent, f"entities/{entity.pk}")),
        outsider_client.delete(kg(agent, f"entities/{entity.pk}")),
        add(outsider_client, agent, "Mallory"),
        traverse(outsider_client, agent, name="Alice"),
        outsider_client.get(kg(agent, "export")),
        outsider_client.get(kg(agent, "duplicates")),
    ):
        assert_envelope(response, 404)
    assert Entity.objects.filter(agent=agent).count() == 1
    # An entity id of another org, even under this org's agent, answers 404.
    theirs = node(foreign_agent, "Eve")
    assert_envelope(member_client.get(kg(agent, f"entities/{theirs.pk}")), 404)
    assert_envelope(member_client.delete(kg(agent, f"entities/{theirs.pk}")), 404)
    assert_envelope(member_client.get(kg(foreign_agent, "entities")), 404)
    _, viewer_client = client_with_role(org, Role.VIEWER)
    assert_envelope(viewer_client.get(kg(agent, "entities")), 403, "ERR_ROLE_REQUIRED")


def test_list_endpoints_do_not_query_per_row(agent, member_client):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def queries(path):
        with CaptureQueriesContext(connection) as captured:
            assert member_client.get(path).status_code == 200
        return len(captured)

    first = node(agent, "N0")
    node(agent, "N1")
    small = (
        queries(kg(agent, "entities")),
        queries(kg(agent, f"entities/{first.pk}")),
        queries(kg(agent, "export")),
    )
    for index in range(2, 12):
        other = node(agent, f"N{index}")
        edge(agent, first, other)
    large = (
        queries(kg(agent, "entities")),
        queries(kg(agent, f"entities/{first.pk}")),
        queries(kg(agent, "export")),
    )
    assert large == small


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_upserts_of_one_name_make_one_entity():
    import threading

    from django.db import connection

    from tests.factories import OrganizationFactory

    org = OrganizationFactory()
    agent = make_agent(org)
    barrier = threading.Barrier(4)
    results, errors = [], []

    def upsert(name):
        try:
            barrier.wait(timeout=10)
            results.append(entity_upsert(agent=agent, actor=None, name=name)[0].pk)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=upsert, args=(n,)) for n in ("Acme", "ACME", "acme.", " Acme ")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(set(results)) == 1
    assert Entity.objects.filter(agent=agent).count() == 1
