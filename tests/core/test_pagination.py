"""List conventions: ``{items, total, limit, offset}`` pages scoped to the caller's org, and cursor
pages that stay stable while rows are added."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from core.models import Job
from tests.core.test_errors import assert_envelope

JOBS = "/api/v1/_test/jobs"
CURSOR = "/api/v1/_test/jobs-cursor"


def make_jobs(org, count: int) -> list[str]:
    """``count`` jobs a second apart (no ties in created_at); their ids newest first."""
    start = timezone.now() - timedelta(hours=1)
    ids = []
    for i in range(count):
        job = Job.objects.create(kind="test.echo", org=org, payload={"n": i})
        Job.objects.filter(pk=job.pk).update(created_at=start + timedelta(seconds=i))
        ids.append(str(job.pk))
    return ids[::-1]


@pytest.fixture
def job_ids(org, other_org):
    make_jobs(other_org, 2)
    return make_jobs(org, 7)


def ids_of(response) -> list[str]:
    return [item["id"] for item in response.json()["items"]]


class TestLimitOffset:
    def test_page_has_exactly_the_convention_keys(self, owner_client, job_ids):
        response = owner_client.get(JOBS)
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"items", "total", "limit", "offset"}
        assert body["total"] == 7
        assert body["limit"] == 50
        assert body["offset"] == 0
        assert ids_of(response) == job_ids

    def test_limit_and_offset_slice(self, owner_client, job_ids):
        body = owner_client.get(JOBS, {"limit": 2, "offset": 2}).json()
        assert [item["id"] for item in body["items"]] == job_ids[2:4]
        assert (body["total"], body["limit"], body["offset"]) == (7, 2, 2)

    def test_offset_past_the_end_is_an_empty_page(self, owner_client, job_ids):
        body = owner_client.get(JOBS, {"offset": 100}).json()
        assert body["items"] == []
        assert body["total"] == 7

    def test_default_limit_is_50_and_larger_limits_are_clamped_to_200(self, owner_client, org):
        Job.objects.bulk_create(Job(kind="test.echo", org=org) for _ in range(55))
        body = owner_client.get(JOBS).json()
        assert (len(body["items"]), body["total"], body["limit"]) == (50, 55, 50)
        body = owner_client.get(JOBS, {"limit": 1000}).json()
        assert (len(body["items"]), body["limit"]) == (55, 200)

    def test_member_sees_the_org_rows(self, member_client, job_ids):
        body = member_client.get(JOBS).json()
        assert body["total"] == 7

    def test_outsider_sees_only_their_own_org(self, outsider_client, job_ids):
        body = outsider_client.get(JOBS).json()
        assert body["total"] == 2
        assert not set(job_ids) & {item["id"] for item in body["items"]}


class TestCursor:
    def walk(self, client, between_pages=None) -> list[str]:
        """Follow next_cursor to the end, returning every id in the order served."""
        seen: list[str] = []
        cursor = None
        while True:
            response = client.get(CURSOR, {"cursor": cursor} if cursor else {})
            assert response.status_code == 200, response.content
            body = response.json()
            assert set(body) == {"items", "next_cursor", "previous_cursor", "limit"}
            assert body["limit"] == 3
            assert len(body["items"]) <= 3
            if cursor is None:
                assert body["previous_cursor"] is None
            else:
                assert body["previous_cursor"]
            seen += [item["id"] for item in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return seen
            if between_pages:
                between_pages()

    def test_pages_hold_every_row_once_in_order(self, owner_client, job_ids):
        assert self.walk(owner_client) == job_ids

    def test_rows_added_while_walking_neither_repeat_nor_hide_older_ones(self, owner_client, org, job_ids):
        added: list[str] = []

        def add_newest():
            added.append(str(Job.objects.create(kind="test.echo", org=org).pk))

        seen = self.walk(owner_client, between_pages=add_newest)
        assert seen == job_ids
        assert len(added) == 2  # 7 rows, 3 a page: two fetches after the first
        # The new rows come first for the next reader.
        assert ids_of(owner_client.get(CURSOR))[:2] == added[::-1]

    def test_limit_changes_the_page_size(self, owner_client, job_ids):
        body = owner_client.get(CURSOR, {"limit": 5}).json()
        assert body["limit"] == 5
        assert [item["id"] for item in body["items"]] == job_ids[:5]

    def test_outsider_walks_only_their_own_org(self, outsider_client, job_ids):
        assert not set(self.walk(outsider_client)) & set(job_ids)

    def test_garbage_cursor_is_404_envelope(self, owner_client, job_ids):
        error = assert_envelope(owner_client.get(CURSOR, {"cursor": "not-a-cursor"}), 404)
        assert error["message"] == "Invalid cursor"
