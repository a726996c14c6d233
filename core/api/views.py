"""Platform endpoints of `core`: health, readiness, version, metrics, and background jobs."""

from __future__ import annotations

import base64
import binascii
import hmac

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from core import health, metrics, realtime, selectors
from core.errors import envelope
from core.services import job_group
from core.sse import KEEPALIVE, EventStreamRenderer, sse_frame, sse_response

from .serializers import HealthSerializer, JobSerializer, ReadySerializer, VersionSerializer


class PublicProbeView(APIView):
    """Probes answer without authentication, throttling or content negotiation surprises."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []


class HealthView(PublicProbeView):
    @extend_schema(
        operation_id="health",
        tags=["platform"],
        responses={200: HealthSerializer, 503: HealthSerializer},
        summary="Liveness with dependency checks (503 when the database is down).",
    )
    def get(self, request):
        checks = {
            "db": health.run_check(health.check_db),
            "cache": health.run_check(health.check_cache),
            "broker": health.run_check(health.check_broker),
        }
        if checks["db"]["status"] != "ok":
            overall = "down"
        elif all(c["status"] == "ok" for c in checks.values()):
            overall = "ok"
        else:
            overall = "degraded"
        body = {"status": overall, "version": settings.PLATFORM_VERSION, "checks": checks}
        return Response(body, status=503 if overall == "down" else 200)


class ReadyView(PublicProbeView):
    @extend_schema(
        operation_id="ready",
        tags=["platform"],
        responses={200: ReadySerializer, 503: ReadySerializer},
        summary="Readiness: 200 when the database answers.",
    )
    def get(self, request):
        ok = health.run_check(health.check_db)["status"] == "ok"
        return Response({"status": "ready" if ok else "not_ready"}, status=200 if ok else 503)


class VersionView(PublicProbeView):
    @extend_schema(operation_id="version", tags=["platform"], responses=VersionSerializer)
    def get(self, request):
        return Response(
            {
                "version": settings.PLATFORM_VERSION,
                "commit": health.git_commit(),
                "uptime_s": health.uptime_seconds(),
            }
        )


def _metrics_auth_ok(request) -> bool:
    expected = settings.METRICS_BASIC_AUTH
    if not expected:
        return True
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        supplied = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(supplied, expected.encode())


class MetricsView(PublicProbeView):
    @extend_schema(
        operation_id="metrics",
        tags=["platform"],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="Prometheus text"),
            401: OpenApiResponse(description="METRICS_BASIC_AUTH is set and was not given."),
        },
        summary="Prometheus metrics (basic auth when METRICS_BASIC_AUTH is set).",
    )
    def get(self, request):
        if not _metrics_auth_ok(request):
            response = HttpResponse(status=401)
            response["WWW-Authenticate"] = 'Basic realm="metrics"'
            return response
        return HttpResponse(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST)


class JobDetailView(APIView):
    @extend_schema(operation_id="jobs_retrieve", tags=["jobs"], responses=JobSerializer)
    def get(self, request, job_id):
        job = selectors.job_get(job_id=job_id, org=getattr(request, "org", None), user=request.user)
        return Response(JobSerializer(job).data)


async def job_frames(job_id: str):
    """SSE frames for one job: its state whenever it changes, ending with ``job.end``."""
    seq, last, idle = 0, None, 0.0
    async with realtime.Subscription(job_group(job_id)) as subscription:
        while True:
            job = await database_sync_to_async(selectors.job_snapshot)(job_id=job_id)
            if job is None:
                yield sse_frame(envelope("ERR_NOT_FOUND", "Job not found.")["error"], event="error")
                return
            state = (job.status, job.percent, job.message)
            if state != last:
                seq += 1
                last, idle = state, 0.0
                event = "job.end" if job.is_finished else "job.progress"
                yield sse_frame(JobSerializer(job).data, event=event, event_id=seq)
            if job.is_finished:
                return
            wait = realtime.follow_interval()
            if await subscription.next(wait) is None:
                idle += wait
                if idle >= settings.SSE_KEEPALIVE_SECONDS:
                    idle = 0.0
                    yield KEEPALIVE


class JobStreamView(APIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(
        operation_id="jobs_stream",
        tags=["jobs"],
        responses={
            (200, "text/event-stream"): OpenApiResponse(
                OpenApiTypes.STR,
                description=(
                    "Server-sent events: `job.progress` with the job whenever it changes, then one "
                    "`job.end` when it has finished."
                ),
            )
        },
    )
    def get(self, request, job_id):
        job = selectors.job_get(job_id=job_id, org=getattr(request, "org", None), user=request.user)
        return sse_response(job_frames(str(job.pk)), kind="job")
