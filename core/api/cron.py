"""``POST /api/cron/<job>``: run a registered cron job, for schedulers that call a URL.

The caller proves itself with ``CRON_SECRET`` as ``Authorization: Bearer <secret>`` (or the
``X-Cron-Secret`` header), compared in constant time. A missing or wrong secret, or an
installation without ``CRON_SECRET``, answers 401; an unknown job 404.
"""

from __future__ import annotations

import hmac

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.crons import run_cron
from core.errors import ApplicationError


class CronSecretRequired(ApplicationError):
    status_code = 401
    code = "ERR_CRON_SECRET"
    message = "A valid cron secret is required."


def _presented_secret(request) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[7:].strip()
    return request.headers.get("X-Cron-Secret", "").strip()


class CronRunView(APIView):
    """Run one cron job now."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        operation_id="cron_run",
        tags=["platform"],
        request=None,
        responses={
            200: inline_serializer(
                "CronRunOutput",
                fields={
                    "job": serializers.CharField(),
                    "ok": serializers.BooleanField(),
                    "duration_ms": serializers.FloatField(),
                    "result": serializers.JSONField(),
                },
            ),
            401: OpenApiResponse(OpenApiTypes.OBJECT, description="Missing or wrong cron secret."),
            404: OpenApiResponse(OpenApiTypes.OBJECT, description="Unknown job."),
        },
        summary="Run a cron job (cron secret).",
        description="Jobs: `usage-rollup`, `reconcile-budgets` and whatever other apps register.",
    )
    def post(self, request, job: str):
        expected = getattr(settings, "CRON_SECRET", "") or ""
        presented = _presented_secret(request)
        if not expected or not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise CronSecretRequired()
        return Response(run_cron(job))
