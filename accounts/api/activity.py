"""API of `accounts`: the audit log (activity list, aggregates, CSV export) and security events.

MEMBERs read the rows they are the actor of, ADMINs and OWNERs read all rows of their org (the
rule lives in ``accounts.selectors.audit``); VIEWERs get 403. Security events are for OWNERs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from accounts.api.activity_serializers import (
    ActivityAggregateInputSerializer,
    ActivityAggregateOutputSerializer,
    ActivityEntryOutputSerializer,
    ActivityFilterInputSerializer,
    SecurityEventFilterInputSerializer,
    SecurityEventOutputSerializer,
)
from accounts.api.base import TenantAPIView
from accounts.models import Role
from accounts.selectors.audit import (
    audit_log_after,
    audit_log_aggregate,
    audit_log_list,
    security_event_list,
)
from core.pagination import LimitOffsetPagination

# An export stops after this many rows; narrow it with from/to to get the rest.
CSV_MAX_ROWS = 100_000
# Rows fetched per query while streaming an export.
CSV_BATCH_SIZE = 2_000
CSV_COLUMNS = [
    "id",
    "created_at",
    "action",
    "entity_type",
    "entity_id",
    "actor_id",
    "actor_email",
    "api_key_id",
    "ip",
    "user_agent",
    "request_id",
    "changes",
    "before",
    "after",
]
_JSON_COLUMNS = {"changes", "before", "after"}
# Cells starting with these are formulas to a spreadsheet; a leading quote keeps them text.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ActivityBaseView(TenantAPIView):
    """Audit log reads: MEMBER and up (the selector narrows MEMBERs to their own rows)."""

    read_role = Role.MEMBER
    scope_area = "activity"

    def filter_input(self, serializer_class=ActivityFilterInputSerializer) -> ActivityFilterInputSerializer:
        serializer = serializer_class(data=self.request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer


class ActivityListView(ActivityBaseView):
    """GET /activity: the filtered audit log, newest first, as a page."""

    pagination_class = LimitOffsetPagination

    @extend_schema(
        operation_id="activity_list",
        tags=["activity"],
        summary="The org's audit log, newest first (MEMBERs see their own rows).",
        parameters=[ActivityFilterInputSerializer],
        responses=ActivityEntryOutputSerializer(many=True),
    )
    def get(self, request):
        filters = self.filter_input().to_filters()
        rows = audit_log_list(org=request.org, user=request.user, role=request.role, filters=filters)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, request, view=self)
        return paginator.get_paginated_response(ActivityEntryOutputSerializer(page, many=True).data)


class ActivityAggregateView(ActivityBaseView):
    """GET /activity/aggregate: how many rows per action, actor, entity type or day."""

    @extend_schema(
        operation_id="activity_aggregate",
        tags=["activity"],
        summary="Audit rows counted by action, actor, entity type or day.",
        parameters=[ActivityAggregateInputSerializer],
        responses=ActivityAggregateOutputSerializer,
    )
    def get(self, request):
        serializer = self.filter_input(ActivityAggregateInputSerializer)
        group_by = serializer.validated_data["group_by"]
        items = audit_log_aggregate(
            org=request.org,
            user=request.user,
            role=request.role,
            group_by=group_by,
            filters=serializer.to_filters(),
        )
        return Response(ActivityAggregateOutputSerializer({"group_by": group_by, "items": items}).data)


class CsvRenderer(BaseRenderer):
    """Lets ``Accept: text/csv`` through content negotiation; the view streams the body itself."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data if isinstance(data, bytes | str) else json.dumps(data)


class _Echo:
    """A file-like object whose write returns what it was given: csv.writer makes one line."""

    def write(self, value: str) -> str:
        return value


def _csv_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in _JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    if column == "created_at":
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _fetch_batch(rows, after: tuple | None, size: int) -> list[tuple]:
    if after is not None:
        rows = audit_log_after(rows, created_at=after[0], pk=after[1])
    return list(rows.values_list(*CSV_COLUMNS)[:size])


async def _csv_lines(rows) -> AsyncIterator[str]:
    """The header, then the rows in batches (keyset paginated), up to ``CSV_MAX_ROWS``.

    Async so that under ASGI the export streams instead of being collected in memory first.
    """
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    sent, after = 0, None
    fetch = sync_to_async(_fetch_batch)
    while sent < CSV_MAX_ROWS:
        batch = await fetch(rows, after, min(CSV_BATCH_SIZE, CSV_MAX_ROWS - sent))
        if not batch:
            return
        yield "".join(writer.writerow(_csv_row(row)) for row in batch)
        sent += len(batch)
        after = (batch[-1][1], batch[-1][0])
        if len(batch) < CSV_BATCH_SIZE:
            return


def _csv_row(row: Iterable[Any]) -> list[str]:
    return [_csv_cell(column, value) for column, value in zip(CSV_COLUMNS, row, strict=True)]


class ActivityCsvView(ActivityBaseView):
    """GET /activity.csv: the filtered audit log as a streamed CSV attachment."""

    renderer_classes = [JSONRenderer, CsvRenderer]

    @extend_schema(
        operation_id="activity_csv",
        tags=["activity"],
        summary=f"The filtered audit log as a CSV attachment, newest first (at most {CSV_MAX_ROWS} rows).",
        parameters=[ActivityFilterInputSerializer],
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR,
                description=f"Header row ({', '.join(CSV_COLUMNS)}), then one row per audit entry; "
                "JSON columns hold compact JSON.",
            )
        },
    )
    def get(self, request):
        filters = self.filter_input().to_filters()
        rows = audit_log_list(org=request.org, user=request.user, role=request.role, filters=filters)
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        response = StreamingHttpResponse(_csv_lines(rows), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="activity-{request.org.slug}-{stamp}.csv"'
        response["Cache-Control"] = "no-store"
        return response

    def handle_exception(self, exc):
        # Errors are the JSON envelope even when the client asked for text/csv.
        response = super().handle_exception(exc)
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return response


class SecurityEventListView(TenantAPIView):
    """Failed logins, key misuse, signature failures and denials of the org: OWNERs only."""

    read_role = Role.OWNER
    scope_area = "security"
    pagination_class = LimitOffsetPagination

    @extend_schema(
        operation_id="security_events_list",
        tags=["activity"],
        summary="The org's security events, newest first (OWNER).",
        parameters=[SecurityEventFilterInputSerializer],
        responses=SecurityEventOutputSerializer(many=True),
    )
    def get(self, request):
        serializer = SecurityEventFilterInputSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        events = security_event_list(
            org=request.org,
            kind=data.get("kind", ""),
            created_from=data.get("from"),
            created_to=data.get("to"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(SecurityEventOutputSerializer(page, many=True).data)


# activity.csv comes first and no pattern here captures a path segment, so it can never be read
# as activity/<something>.
urlpatterns = [
    path("activity.csv", ActivityCsvView.as_view(), name="activity-csv"),
    path("activity/aggregate", ActivityAggregateView.as_view(), name="activity-aggregate"),
    path("activity", ActivityListView.as_view(), name="activity-list"),
    path("security-events", SecurityEventListView.as_view(), name="security-events"),
]
