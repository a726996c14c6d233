"""The audit log API: who sees which rows, every filter, aggregates and the CSV export."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from asgiref.sync import async_to_sync
from rest_framework.test import APIClient

from accounts import keys
from accounts.api import activity as activity_api
from accounts.models import ApiKey, AuditLog, Role
from accounts.services.audit import audit_record
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory, UserFactory

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]

LIST = "/api/v1/activity"
AGGREGATE = "/api/v1/activity/aggregate"
CSV = "/api/v1/activity.csv"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def record(org, actor, action, *, entity_type="widget", entity_id="w1", at=None, before=None, after=None):
    """An audit row through the real service, then moved in time (time travel by update)."""
    row = audit_record(
        org=org,
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        before=before,
        after=after,
    )
    if at is not None:
        AuditLog.objects.filter(pk=row.pk).update(created_at=at)
        row.refresh_from_db()
    return row


def member_of(org, role):
    return MembershipFactory(org=org, role=role).user


def csv_rows(response) -> list[list[str]]:
    """The body of a streamed (async) CSV response, parsed."""

    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return list(csv.reader(io.StringIO(async_to_sync(collect)().decode())))


def service_key(org, user, *, role=Role.ADMIN, scopes=None) -> str:
    """A service API key row and its full secret, for calls with Authorization: Bearer."""
    public_id, secret = keys.new_public_id(), keys.new_secret()
    ApiKey.objects.create(
        org=org,
        user=user,
        kind=ApiKey.Kind.SERVICE,
        name="ci",
        public_id=public_id,
        secret_hash=keys.hash_secret(secret),
        role=role,
        scopes=scopes or [],
    )
    return keys.format_key("service", public_id, secret)


@pytest.fixture
def admin(org):
    return member_of(org, Role.ADMIN)


@pytest.fixture
def viewer(org):
    return member_of(org, Role.VIEWER)


@pytest.fixture
def admin_client(admin):
    # Shadows pytest-django's admin_client on purpose: here "admin" is the org role.
    return client_for(admin)


@pytest.fixture
def trail(org, owner, member, admin, other_org, outsider):
    """Rows of three actors in `org` (oldest first) and one in another org."""
    return {
        "owner_key": record(org, owner, "api_key.created", entity_type="apikey", entity_id="k1", at=T0),
        "member_key": record(
            org, member, "api_key.revoked", entity_type="apikey", entity_id="k2", at=T0 + timedelta(hours=1)
        ),
        "member_role": record(
            org,
            member,
            "member.role_changed",
            entity_type="member",
            entity_id=str(member.pk),
            at=T0 + timedelta(days=1),
            before={"role": "VIEWER"},
            after={"role": "MEMBER"},
        ),
        "admin_group": record(
            org, admin, "group.created", entity_type="group", entity_id="g1", at=T0 + timedelta(days=2)
        ),
        "foreign": record(
            other_org, outsider, "api_key.created", entity_type="apikey", at=T0 + timedelta(days=3)
        ),
    }


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["items"]]


# --- Visibility -----------------------------------------------------------------------------------


def test_member_sees_only_rows_they_did(member_client, trail):
    assert ids(member_client.get(LIST)) == [str(trail["member_role"].pk), str(trail["member_key"].pk)]


@pytest.mark.parametrize("who", ["owner_client", "admin_client"])
def test_admin_and_owner_see_every_row_of_their_org_newest_first(request, who, trail):
    body = request.getfixturevalue(who).get(LIST).json()
    expected = ["admin_group", "member_role", "member_key", "owner_key"]
    assert [item["id"] for item in body["items"]] == [str(trail[name].pk) for name in expected]
    assert body["total"] == 4 and body["limit"] == 50 and body["offset"] == 0


def test_viewer_is_refused_with_role_required(viewer, trail):
    error = assert_envelope(client_for(viewer).get(LIST), 403, "ERR_ROLE_REQUIRED")
    assert error["details"]["required_role"] == Role.MEMBER


def test_anonymous_is_401(anon_client, trail):
    assert_envelope(anon_client.get(LIST), 401)


def test_outsider_sees_nothing_of_the_org(outsider_client, trail):
    assert ids(outsider_client.get(LIST)) == [str(trail["foreign"].pk)]
    aggregate = outsider_client.get(AGGREGATE, {"group_by": "action"}).json()
    assert aggregate["items"] == [{"key": "api_key.created", "label": "api_key.created", "count": 1}]


def test_outsider_naming_the_org_in_x_org_id_gets_404(outsider_client, org, trail):
    assert_envelope(outsider_client.get(LIST, HTTP_X_ORG_ID=str(org.pk)), 404)


def test_item_has_every_documented_field(owner_client, member, trail):
    item = owner_client.get(LIST, {"entity": f"member:{member.pk}"}).json()["items"][0]
    assert set(item) == {
        "id",
        "created_at",
        "action",
        "entity_type",
        "entity_id",
        "actor",
        "api_key",
        "before",
        "after",
        "changes",
        "ip",
        "user_agent",
        "request_id",
    }
    assert item["actor"] == {"id": str(member.pk), "email": member.email}
    assert item["action"] == "member.role_changed"
    assert item["before"] == {"role": "VIEWER"} and item["after"] == {"role": "MEMBER"}
    assert item["changes"] == {"role": ["VIEWER", "MEMBER"]}
    assert item["api_key"] is None
    assert datetime.fromisoformat(item["created_at"].replace("Z", "+00:00")) == T0 + timedelta(days=1)


def test_system_rows_have_a_null_actor(owner_client, org):
    record(org, None, "org.purged")
    assert owner_client.get(LIST).json()["items"][0]["actor"] is None


def test_rows_done_with_an_api_key_name_the_key(owner_client, org, owner):
    service_key(org, owner)
    key = ApiKey.objects.get()
    row = record(org, owner, "x.y")
    AuditLog.objects.filter(pk=row.pk).update(api_key=key)  # as if written during a key request
    assert owner_client.get(LIST).json()["items"][0]["api_key"] == str(key.pk)


def test_pagination_with_limit_and_offset(owner_client, trail):
    body = owner_client.get(LIST, {"limit": 2, "offset": 1}).json()
    assert body["total"] == 4 and body["limit"] == 2 and body["offset"] == 1
    assert [item["id"] for item in body["items"]] == [
        str(trail["member_role"].pk),
        str(trail["member_key"].pk),
    ]


def test_list_runs_a_fixed_number_of_queries(owner_client, org, owner, django_assert_max_num_queries):
    for n in range(30):
        record(org, owner, f"thing.n{n}")
    with django_assert_max_num_queries(8):
        assert len(owner_client.get(LIST).json()["items"]) == 30


def test_api_key_with_activity_scope_reads_and_others_are_refused(org, owner, trail):
    allowed, refused = APIClient(), APIClient()
    allowed.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key(org, owner, scopes=['activity:read'])}")
    refused.credentials(HTTP_AUTHORIZATION=f"Bearer {service_key(org, owner, scopes=['agents:read'])}")
    assert len(ids(allowed.get(LIST))) == 4
    assert_envelope(refused.get(LIST), 403, "ERR_SCOPE_REQUIRED")


# --- Filters --------------------------------------------------------------------------------------


def test_filter_by_actor(owner_client, admin, trail):
    assert ids(owner_client.get(LIST, {"actor": str(admin.pk)})) == [str(trail["admin_group"].pk)]


def test_member_filtering_by_someone_else_sees_nothing(member_client, owner, trail):
    assert ids(member_client.get(LIST, {"actor": str(owner.pk)})) == []


def test_filter_by_exact_action(owner_client, trail):
    assert ids(owner_client.get(LIST, {"action": "api_key.revoked"})) == [str(trail["member_key"].pk)]
    assert ids(owner_client.get(LIST, {"action": "api_key"})) == []


def test_filter_by_action_prefix(owner_client, trail):
    expected = [str(trail["member_key"].pk), str(trail["owner_key"].pk)]
    assert ids(owner_client.get(LIST, {"action": "api_key.*"})) == expected


def test_filter_by_entity_type_and_by_type_and_id(owner_client, trail):
    assert len(ids(owner_client.get(LIST, {"entity": "apikey"}))) == 2
    assert ids(owner_client.get(LIST, {"entity": "apikey:k1"})) == [str(trail["owner_key"].pk)]
    assert ids(owner_client.get(LIST, {"entity": "apikey:nope"})) == []


def test_filter_by_time_range_from_inclusive_to_exclusive(owner_client, trail):
    params = {"from": T0.isoformat(), "to": (T0 + timedelta(days=1)).isoformat()}
    assert ids(owner_client.get(LIST, params)) == [str(trail["member_key"].pk), str(trail["owner_key"].pk)]
    assert ids(owner_client.get(LIST, {"from": "2025-03-02T12:00:00Z"})) == [
        str(trail["admin_group"].pk),
        str(trail["member_role"].pk),
    ]


def test_an_unencoded_plus_offset_is_understood(owner_client, trail):
    # "+01:00" sent raw in a query string arrives as " 01:00".
    response = owner_client.get(f"{LIST}?from=2025-03-03T13:00:00+01:00")
    assert ids(response) == [str(trail["admin_group"].pk)]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-13-45T00:00:00Z"}, "to"),
        ({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"}, "to"),
        ({"actor": "not-a-uuid"}, "actor"),
        ({"entity": ":k1"}, "entity"),
        ({"action": "x" * 65}, "action"),
    ],
)
@pytest.mark.parametrize("path", [LIST, AGGREGATE, CSV])
def test_bad_filters_are_a_400_naming_the_field(owner_client, trail, path, params, field):
    query = {"group_by": "action", **params} if path == AGGREGATE else params
    error = assert_envelope(owner_client.get(path, query), 400, "ERR_VALIDATION")
    assert field in error["details"]["fields"]


# --- Aggregates -----------------------------------------------------------------------------------


def test_aggregate_by_action_counts_largest_first(owner_client, org, owner, trail):
    record(org, owner, "api_key.revoked")
    body = owner_client.get(AGGREGATE, {"group_by": "action"}).json()
    assert body["group_by"] == "action"
    assert [(i["key"], i["count"]) for i in body["items"]] == [
        ("api_key.revoked", 2),
        ("api_key.created", 1),
        ("group.created", 1),
        ("member.role_changed", 1),
    ]


def test_aggregate_by_actor_gives_ids_and_emails(owner_client, owner, member, admin, trail):
    items = owner_client.get(AGGREGATE, {"group_by": "actor"}).json()["items"]
    assert items[0] == {"key": str(member.pk), "label": member.email, "count": 2}
    assert sorted((i["key"], i["label"], i["count"]) for i in items[1:]) == sorted(
        [(str(owner.pk), owner.email, 1), (str(admin.pk), admin.email, 1)]
    )


def test_aggregate_by_entity_type(owner_client, trail):
    items = owner_client.get(AGGREGATE, {"group_by": "entity_type"}).json()["items"]
    assert [(i["key"], i["count"]) for i in items] == [("apikey", 2), ("group", 1), ("member", 1)]


def test_aggregate_by_day_is_chronological(owner_client, trail):
    items = owner_client.get(AGGREGATE, {"group_by": "day"}).json()["items"]
    assert [(i["key"], i["count"]) for i in items] == [
        ("2025-03-01", 2),
        ("2025-03-02", 1),
        ("2025-03-03", 1),
    ]


def test_aggregate_applies_filters_and_member_visibility(owner_client, member_client, trail):
    by_owner = owner_client.get(AGGREGATE, {"group_by": "action", "action": "api_key.*"}).json()["items"]
    assert {i["key"]: i["count"] for i in by_owner} == {"api_key.created": 1, "api_key.revoked": 1}
    by_member = member_client.get(AGGREGATE, {"group_by": "entity_type"}).json()["items"]
    assert {i["key"]: i["count"] for i in by_member} == {"apikey": 1, "member": 1}


@pytest.mark.parametrize("query", [{}, {"group_by": "colour"}])
def test_aggregate_without_a_known_dimension_is_400(owner_client, trail, query):
    error = assert_envelope(owner_client.get(AGGREGATE, query), 400, "ERR_VALIDATION")
    assert "group_by" in error["details"]["fields"]


def test_aggregate_is_refused_to_viewers(viewer, trail):
    assert_envelope(client_for(viewer).get(AGGREGATE, {"group_by": "day"}), 403, "ERR_ROLE_REQUIRED")


# --- CSV export -----------------------------------------------------------------------------------


def test_csv_is_a_streamed_attachment_with_a_header_and_one_row_per_entry(owner_client, org, member, trail):
    response = owner_client.get(CSV)
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith(f'attachment; filename="activity-{org.slug}-')
    rows = csv_rows(response)
    assert rows[0] == activity_api.CSV_COLUMNS
    assert [row[0] for row in rows[1:]] == [
        str(trail[name].pk) for name in ["admin_group", "member_role", "member_key", "owner_key"]
    ]
    by_column = dict(zip(rows[0], rows[2], strict=True))
    assert by_column["action"] == "member.role_changed"
    assert by_column["actor_id"] == str(member.pk) and by_column["actor_email"] == member.email
    assert json.loads(by_column["changes"]) == {"role": ["VIEWER", "MEMBER"]}
    assert datetime.fromisoformat(by_column["created_at"]) == T0 + timedelta(days=1)


def test_csv_accepts_text_csv_and_does_not_clash_with_the_list(owner_client, trail):
    response = owner_client.get(CSV, HTTP_ACCEPT="text/csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert owner_client.get(LIST)["Content-Type"].startswith("application/json")


def test_csv_applies_filters_and_member_visibility(owner_client, member_client, trail):
    rows = csv_rows(owner_client.get(CSV, {"action": "api_key.*"}))
    assert [row[2] for row in rows[1:]] == ["api_key.revoked", "api_key.created"]
    rows = csv_rows(member_client.get(CSV))
    assert [row[0] for row in rows[1:]] == [str(trail["member_role"].pk), str(trail["member_key"].pk)]


def test_csv_errors_are_the_json_envelope_even_when_csv_was_asked(viewer, trail):
    assert_envelope(client_for(viewer).get(CSV, HTTP_ACCEPT="text/csv"), 403, "ERR_ROLE_REQUIRED")


def test_csv_cells_that_look_like_formulas_are_kept_as_text(owner_client, org, owner):
    record(org, owner, "x.y", entity_id="=HYPERLINK(1)")
    rows = csv_rows(owner_client.get(CSV))
    assert rows[1][rows[0].index("entity_id")] == "'=HYPERLINK(1)"


def test_csv_batches_do_not_lose_or_repeat_rows_with_equal_timestamps(owner_client, org, owner, monkeypatch):
    monkeypatch.setattr(activity_api, "CSV_BATCH_SIZE", 3)
    made = [record(org, owner, f"x.n{n}", at=T0 + timedelta(minutes=n // 4)) for n in range(11)]
    expected = [str(row.pk) for row in AuditLog.objects.filter(org=org).order_by("-created_at", "-id")]
    rows = csv_rows(owner_client.get(CSV))
    assert [row[0] for row in rows[1:]] == expected
    assert len(expected) == len(made)


def test_csv_stops_at_the_row_cap(owner_client, org, owner, monkeypatch):
    monkeypatch.setattr(activity_api, "CSV_MAX_ROWS", 4)
    monkeypatch.setattr(activity_api, "CSV_BATCH_SIZE", 3)
    for n in range(7):
        record(org, owner, f"x.n{n}")
    assert len(csv_rows(owner_client.get(CSV))) == 1 + 4


def test_csv_is_refused_to_anonymous_callers(anon_client, trail):
    assert_envelope(anon_client.get(CSV), 401)


def test_member_without_rows_gets_an_empty_list(org):
    lonely = member_of(org, Role.MEMBER)
    assert client_for(lonely).get(LIST).json() == {"items": [], "total": 0, "limit": 50, "offset": 0}


def test_user_without_an_org_is_told_so(db):
    assert_envelope(client_for(UserFactory()).get(LIST), 403, "ERR_NO_ORGANISATION")
