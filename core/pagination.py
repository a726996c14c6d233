"""List conventions: ``{items, total, limit, offset}`` pages, and cursors for append-only streams."""

from __future__ import annotations

from rest_framework import pagination
from rest_framework.response import Response

MAX_LIMIT = 200


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """``?limit=&offset=`` (limit at most 200) answered as ``{items, total, limit, offset}``."""

    default_limit = 50
    max_limit = MAX_LIMIT

    def get_paginated_response(self, data):
        return Response({"items": data, "total": self.count, "limit": self.limit, "offset": self.offset})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["items", "total", "limit", "offset"],
            "properties": {
                "items": schema,
                "total": {"type": "integer", "example": 123},
                "limit": {"type": "integer", "example": 50},
                "offset": {"type": "integer", "example": 0},
            },
        }


class CursorPagination(pagination.CursorPagination):
    """Opaque cursors for append-only streams (messages, activity): stable under inserts.

    Answers ``{items, next_cursor, previous_cursor, limit}``; the cursor is passed back as
    ``?cursor=``. Subclasses set ``ordering`` to an indexed, unique-enough column.
    """

    page_size = 50
    page_size_query_param = "limit"
    max_page_size = MAX_LIMIT
    ordering = "-created_at"

    def _cursor_param(self, link: str | None) -> str | None:
        if not link:
            return None
        from urllib.parse import parse_qs, urlparse

        values = parse_qs(urlparse(link).query).get(self.cursor_query_param)
        return values[0] if values else None

    def get_paginated_response(self, data):
        return Response(
            {
                "items": data,
                "next_cursor": self._cursor_param(self.get_next_link()),
                "previous_cursor": self._cursor_param(self.get_previous_link()),
                "limit": self.page_size,
            }
        )

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["items", "next_cursor", "limit"],
            "properties": {
                "items": schema,
                "next_cursor": {"type": "string", "nullable": True},
                "previous_cursor": {"type": "string", "nullable": True},
                "limit": {"type": "integer", "example": 50},
            },
        }
