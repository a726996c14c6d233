"""``Idempotency-Key`` on POST, the way Stripe does it.

The first request with a key runs and its answer is stored for ``IDEMPOTENCY_TTL_HOURS``; a retry
with the same key, caller and body gets that answer again (``Idempotent-Replayed: true``) without
running anything. The same key with another body answers 422 ``ERR_IDEMPOTENCY_MISMATCH``. A
duplicate that arrives while the first is still running answers 409 ``ERR_IDEMPOTENCY_IN_PROGRESS``:
a unique constraint on (caller, key) decides which of two concurrent requests runs.

Not stored (so a retry runs again): 5xx, 401/403/429 (they depend on the moment, not the request),
and streamed answers, which cannot be replayed.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpResponse
from django.utils import timezone

from core.errors.handlers import error_response, is_api_path
from core.models import IdempotencyRecord

from .base import HybridMiddleware

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# A record left "in progress" this long belongs to a process that died; a retry may take it over.
STALE_AFTER = timedelta(minutes=5)
_NOT_STORED = {401, 403, 429}
_REPLAYED_HEADERS = ("Content-Type", "Location")


def caller_fingerprint(request) -> str:
    """Who is asking: a hash of the credential, else the session's user, else the client IP."""
    credential = request.headers.get("Authorization") or request.headers.get("X-Agent-Token")
    if credential:
        source = "cred:" + credential
    else:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            source = f"user:{user.pk}"
        else:
            source = "ip:" + request.META.get("REMOTE_ADDR", "")
    return hashlib.sha256(source.encode()).hexdigest()


def request_fingerprint(request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method} {request.get_full_path()}\n".encode())
    digest.update(request.body)
    return digest.hexdigest()


def _replay(record: IdempotencyRecord) -> HttpResponse:
    response = HttpResponse(bytes(record.response_body or b""), status=record.response_status)
    for name, value in record.response_headers.items():
        response[name] = value
    response["Idempotent-Replayed"] = "true"
    return response


def _claim(request, key: str) -> tuple[IdempotencyRecord | None, HttpResponse | None]:
    """Take the key for this request, or return the answer a duplicate gets instead."""
    caller = caller_fingerprint(request)
    fingerprint = request_fingerprint(request)
    now = timezone.now()
    for _ in range(2):
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    caller=caller,
                    key=key,
                    fingerprint=fingerprint,
                    method=request.method,
                    path=request.path[:2048],
                    expires_at=now + timedelta(hours=settings.IDEMPOTENCY_TTL_HOURS),
                )
            return record, None
        except IntegrityError:
            existing = IdempotencyRecord.objects.filter(caller=caller, key=key).first()
        if existing is None:
            continue  # deleted between our insert and our read: try once more
        if existing.expires_at <= now:
            IdempotencyRecord.objects.filter(pk=existing.pk, expires_at__lte=now).delete()
            continue
        if existing.fingerprint != fingerprint:
            return None, error_response(
                422,
                "ERR_IDEMPOTENCY_MISMATCH",
                "This Idempotency-Key was already used with a different request.",
                {"idempotency_key": key},
                request=request,
            )
        if existing.state == IdempotencyRecord.State.DONE:
            return None, _replay(existing)
        took_over = IdempotencyRecord.objects.filter(
            pk=existing.pk,
            state=IdempotencyRecord.State.IN_PROGRESS,
            created_at__lte=now - STALE_AFTER,
        ).update(created_at=now)
        if took_over:
            existing.refresh_from_db()
            return existing, None
        response = error_response(
            409,
            "ERR_IDEMPOTENCY_IN_PROGRESS",
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            {"idempotency_key": key},
            request=request,
        )
        response["Retry-After"] = "1"
        return None, response
    return None, error_response(409, "ERR_IDEMPOTENCY_IN_PROGRESS", "Retry shortly.", request=request)


def _settle(record: IdempotencyRecord, response) -> None:
    """Store the answer for replay, or forget the key so that a retry runs again."""
    status = response.status_code
    if response.streaming or status >= 500 or status in _NOT_STORED:
        IdempotencyRecord.objects.filter(pk=record.pk).delete()
        return
    record.state = IdempotencyRecord.State.DONE
    record.response_status = status
    record.response_headers = {h: response[h] for h in _REPLAYED_HEADERS if h in response}
    record.response_body = response.content
    record.save(update_fields=["state", "response_status", "response_headers", "response_body"])


def _forget(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(pk=record.pk).delete()


def _key_error(key: str, request=None) -> HttpResponse | None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        return error_response(
            400,
            "ERR_IDEMPOTENCY_KEY_INVALID",
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters.",
            request=request,
        )
    return None


def _applies(request) -> bool:
    return request.method == "POST" and HEADER in request.headers and is_api_path(request.path)


class IdempotencyMiddleware(HybridMiddleware):
    """Runs after authentication middleware, so a session's user is known."""

    def handle(self, request):
        if not _applies(request):
            return self.get_response(request)
        key = request.headers[HEADER].strip()
        if bad := _key_error(key, request):
            return bad
        record, answer = _claim(request, key)
        if answer is not None:
            return answer
        try:
            response = self.get_response(request)
        except BaseException:
            _forget(record)
            raise
        _settle(record, response)
        return response

    async def ahandle(self, request):
        if not _applies(request):
            return await self.get_response(request)
        key = request.headers[HEADER].strip()
        if bad := _key_error(key, request):
            return bad
        record, answer = await sync_to_async(_claim)(request, key)
        if answer is not None:
            return answer
        try:
            response = await self.get_response(request)
        except BaseException:
            await sync_to_async(_forget)(record)
            raise
        await sync_to_async(_settle)(record, response)
        return response
