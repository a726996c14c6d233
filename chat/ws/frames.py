"""The frames of the WebSocket RPC protocol (API.md "WebSocket RPC frames"), parsed and built.

Request ``{"type":"req","id":"<client id>","method":"…","params":{…}}``; answer
``{"type":"res","id":…,"ok":true,"payload":{…}}`` or ``{"type":"res","id":…,"ok":false,
"error":{"code","message"}}``; event ``{"type":"event","event":"…","payload":{…},"seq":<n>}``.
A frame that cannot be a request answers ``ERR_BAD_FRAME`` and the socket stays open.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import ValidationError as DrfValidationError

from core.errors import ApplicationError, ValidationError

MAX_ID_LENGTH = 128
# Finds the client id at the start of a frame too large to parse, so its answer can still name it.
_ID_NEAR_START = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.){0,128}"|-?\d{1,18})')


class BadFrame(ApplicationError):
    """A frame that is not a request: not JSON, not an object, or without ``type``/``id``/``method``."""

    code = "ERR_BAD_FRAME"
    message = "Malformed frame."


class FrameTooLarge(ApplicationError):
    status_code = 413
    code = "ERR_FRAME_TOO_LARGE"
    message = "The frame is too large."


class UnknownMethod(ApplicationError):
    status_code = 404
    code = "ERR_UNKNOWN_METHOD"
    message = "Unknown method."


class TooManyRequests(ApplicationError):
    status_code = 429
    code = "ERR_TOO_MANY_REQUESTS"
    message = "Too many requests in flight on this connection."


@dataclass(frozen=True)
class Request:
    """A parsed request frame."""

    id: str | int
    method: str
    params: dict[str, Any]


def id_of_oversized(text: str) -> str | int | None:
    """The client id of a frame too large to parse, when it stands near the start; else None."""
    match = _ID_NEAR_START.search(text[:512])
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str | int) else None


def parse_request(text: str | None) -> Request:
    """Parse a text frame into a :class:`Request`, or raise ``BadFrame``/``ValidationError``.

    ``BadFrame`` carries the frame's id in ``details["id"]`` when one could be read, so the error
    answer names it.
    """
    if text is None:
        raise BadFrame("Frames are JSON text; binary frames are not accepted.")
    try:
        frame = json.loads(text)
    except ValueError:
        raise BadFrame("The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise BadFrame("The frame must be a JSON object.")
    frame_id = frame.get("id")
    valid_id = (isinstance(frame_id, str) and 0 < len(frame_id) <= MAX_ID_LENGTH) or (
        isinstance(frame_id, int) and not isinstance(frame_id, bool)
    )
    known_id = {"id": frame_id} if valid_id else {}
    if frame.get("type") != "req":
        raise BadFrame('The frame needs "type": "req".', details=known_id)
    if not valid_id:
        raise BadFrame(f'The frame needs an "id": a string of 1 to {MAX_ID_LENGTH} characters or an integer.')
    method = frame.get("method")
    if not isinstance(method, str) or not method:
        raise BadFrame('The frame needs a "method" (a string).', details=known_id)
    params = frame.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValidationError('"params" must be a JSON object.', details={"id": frame_id})
    return Request(id=frame_id, method=method, params=params)


def answer_ok(request_id: Any, payload: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "res", "id": request_id, "ok": True, "payload": payload if payload is not None else {}}


def answer_error(request_id: Any, exc: ApplicationError) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    details = {k: v for k, v in (exc.details or {}).items() if k != "id"}
    if details:
        error["details"] = details
    return {"type": "res", "id": request_id, "ok": False, "error": error}


def event_frame(event: str, payload: dict[str, Any], seq: int) -> dict[str, Any]:
    return {"type": "event", "event": event, "payload": payload, "seq": seq}


def _first_complaint(detail: Any) -> str:
    """``field: message`` of the first field error (nested serializers included)."""
    if isinstance(detail, dict) and detail:
        field, errors = next(iter(detail.items()))
        inner = _first_complaint(errors)
        return inner if field == "non_field_errors" else f"{field}: {inner}"
    if isinstance(detail, list) and detail:
        return _first_complaint(detail[0])
    return str(detail) if detail else "The params are not valid."


def validate_params(serializer_class: type[serializers.Serializer], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked by a DRF serializer; bad or missing ones raise ``ERR_VALIDATION``."""
    serializer = serializer_class(data=params)
    try:
        serializer.is_valid(raise_exception=True)
    except DrfValidationError as exc:
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        raise ValidationError(_first_complaint(detail), details={"fields": detail}) from None
    return dict(serializer.validated_data)
