"""``core.row_inserts``: the new rows of several tables inserted all or none, in one statement on
PostgreSQL, with the defaults ``bulk_create`` would give them."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from accounts.models import Group, GroupMembership, Organization, User
from core.row_inserts import insert_rows

pytestmark = pytest.mark.django_db(transaction=True)


def _rows(slug: str):
    org = Organization(name=slug, slug=slug)
    user = User(email=f"{slug}@example.com")
    group = Group(org=org, name=f"{slug} group")
    member = GroupMembership(group=group, user=user)  # an auto-incremented primary key
    return org, user, group, member


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def test_rows_of_several_tables_are_inserted_with_their_defaults_and_marked_saved():
    org, user, group, member = _rows("row-inserts")
    # Children before their parents: the foreign keys are checked once every row is there.
    groups = [(GroupMembership, [member]), (Group, [group]), (User, [user]), (Organization, [org])]
    with CaptureQueriesContext(connection) as queries:
        insert_rows(groups)

    if connection.vendor == "postgresql":
        assert len(queries) == 1  # one statement, its own transaction: no BEGIN, no COMMIT
        assert member.pk is None  # not read back (see the module doc)
    stored = Organization.objects.get(pk=org.pk)
    assert stored.created_at is not None and stored.created_at == org.created_at  # auto_now_add
    assert GroupMembership.objects.get(group=group).user_id == user.pk
    assert all(not row._state.adding for row in (org, user, group, member))


def test_a_row_that_cannot_be_inserted_takes_the_others_with_it():
    Organization.objects.create(name="taken", slug="taken-slug")
    org, user, group, member = _rows("taken-slug")  # the slug is unique
    with pytest.raises(IntegrityError):
        insert_rows([(User, [user]), (Organization, [org]), (Group, [group]), (GroupMembership, [member])])
    assert not User.objects.filter(email=user.email).exists()
    assert not Group.objects.filter(name=group.name).exists()


def test_a_row_pointing_at_a_missing_row_fails_and_writes_nothing():
    org, user, group, member = _rows("dangling")
    with pytest.raises(IntegrityError):
        insert_rows([(User, [user]), (GroupMembership, [member])])  # its group is not inserted
    assert not User.objects.filter(email=user.email).exists()


@pytest.mark.postgres
def test_rows_with_and_without_a_primary_key_cannot_share_a_group_in_one_statement():
    _org, _user, _group, member = _rows("mixed")
    other = GroupMembership(pk=10_000, group=member.group, user=member.user)
    with pytest.raises(ValueError, match="with and without a primary key"):
        insert_rows([(GroupMembership, [member, other])])


@pytest.mark.postgres
def test_async_commit_applies_to_its_own_statement_and_never_to_a_callers_transaction():
    org, user, group, member = _rows("async-commit")
    insert_rows([(Organization, [org]), (User, [user])], async_commit=True)
    assert Organization.objects.filter(pk=org.pk).exists()
    assert _synchronous_commit() == "on"  # set for that statement's transaction only

    with transaction.atomic():
        with CaptureQueriesContext(connection) as queries:
            insert_rows([(Group, [group]), (GroupMembership, [member])], async_commit=True)
        assert "synchronous_commit" not in queries[0]["sql"]
        assert _synchronous_commit() == "on"
    assert GroupMembership.objects.filter(group=group).exists()


@pytest.mark.postgres
def test_nothing_to_insert_sends_nothing():
    with CaptureQueriesContext(connection) as queries:
        insert_rows([(Organization, [])])
    assert len(queries) == 0


def _count_compiles(monkeypatch) -> list[str]:
    """The tables whose INSERT Django's compiler builds from now on."""
    from django.db.models.sql.compiler import SQLInsertCompiler

    compiled: list[str] = []
    as_sql = SQLInsertCompiler.as_sql

    def counting(self, *args, **kwargs):
        compiled.append(self.query.model._meta.db_table)
        return as_sql(self, *args, **kwargs)

    monkeypatch.setattr(SQLInsertCompiler, "as_sql", counting)
    return compiled


@pytest.mark.postgres
@pytest.mark.parametrize("rows", [1, 3, 6])  # one row, a few rows: VALUES; more: UNNEST arrays
def test_a_shape_seen_before_is_not_compiled_again_and_its_rows_keep_their_own_values(monkeypatch, rows):
    from core import row_inserts

    monkeypatch.setattr(row_inserts, "_shapes", {})
    compiled = _count_compiles(monkeypatch)
    first = [Organization(name=f"first {i}", slug=f"shape-first-{rows}-{i}") for i in range(rows)]
    insert_rows([(Organization, first)])
    assert compiled == ["accounts_organization"]

    later = [Organization(name=f"later {i}", slug=f"shape-later-{rows}-{i}") for i in range(rows)]
    insert_rows([(Organization, later)])
    assert compiled == ["accounts_organization"]  # the learned SQL, with these rows' values

    for org in first + later:
        stored = Organization.objects.get(pk=org.pk)
        assert (stored.name, stored.slug) == (org.name, org.slug)
        assert stored.created_at == org.created_at and stored.updated_at == org.updated_at  # pre_save

    two = [Organization(name=f"two {i}", slug=f"shape-two-{rows}-{i}") for i in range(2)]
    insert_rows([(Organization, two)])
    assert len(compiled) == 2  # another number of rows is another shape


@pytest.mark.postgres
def test_a_few_rows_go_as_plain_values_and_many_as_one_array_per_column():
    """psycopg dumps an array parameter in Python, element by element: the few rows of a chat
    turn's opening go as plain parameters; a burst's many rows as PostgreSQL's UNNEST arrays."""
    from core.row_inserts import UNNEST_MIN_ROWS, rows_statement

    def statement(rows: int):
        orgs = [Organization(name=f"o{i}", slug=f"form-{rows}-{i}") for i in range(rows)]
        return rows_statement([(Organization, orgs)])

    for _ in range(2):  # compiled, then from the learned shape
        few_sql, few_params = statement(UNNEST_MIN_ROWS - 1)
        many_sql, many_params = statement(UNNEST_MIN_ROWS)
        assert "UNNEST" not in few_sql and not any(isinstance(p, list) for p in few_params)
        assert "UNNEST" in many_sql and all(isinstance(p, list) for p in many_params)


@pytest.mark.postgres
def test_a_value_that_is_an_expression_is_compiled_even_when_its_shape_is_known(monkeypatch):
    from django.db.models.functions import Now

    from core import row_inserts

    monkeypatch.setattr(row_inserts, "_shapes", {})
    compiled = _count_compiles(monkeypatch)
    insert_rows([(Organization, [Organization(name="plain", slug="expression-plain")])])
    org = Organization(name="expression", slug="expression-now", deletion_requested_at=Now())
    insert_rows([(Organization, [org])])
    assert len(compiled) == 2
    assert Organization.objects.get(pk=org.pk).deletion_requested_at is not None


def test_numbered_placeholders_for_a_raw_cursor():
    from core.loop_writer import native_placeholders

    sql = "INSERT INTO t (a, b) VALUES (%s, %s), (%s, '50%%')"
    assert native_placeholders(sql) == "INSERT INTO t (a, b) VALUES ($1, $2), ($3, '50%')"
    with pytest.raises(ValueError, match="Unsupported placeholder"):
        native_placeholders("SELECT %(name)s")
