"""Small API views that exercise the shared conventions (envelope, limits, idempotency,
pagination) the way real endpoints will. Mounted only by tests, through ``tests.core.urls``."""

from __future__ import annotations

import time

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST
from rest_framework import generics, serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ApplicationError, NotFoundError
from core.models import Job
from core.pagination import CursorPagination
from core.registries import register_job
from core.services import job_create


@register_job("test.echo")
def echo_job(job, reporter):
    return {"echo": job.payload}


@register_job("test.steps")
def steps_job(job, reporter):
    """Reports progress in steps; `fail_at` makes it raise an ApplicationError there."""
    for step in range(1, job.payload.get("steps", 3) + 1):
        if job.payload.get("fail_at") == step:
            raise ApplicationError("Step failed.", code="ERR_TEST_STEP")
        reporter.progress(int(step * 100 / (job.payload.get("steps", 3) + 1)), f"step {step}")
        time.sleep(job.payload.get("pause", 0))
    return {"steps": job.payload.get("steps", 3)}


@register_job("test.crash")
def crash_job(job, reporter):
    raise RuntimeError("secret internal detail")


class EchoInput(serializers.Serializer):
    name = serializers.CharField(max_length=10)
    count = serializers.IntegerField(min_value=0, required=False)


class EchoView(APIView):
    """POST creates a Job row per execution, so tests can count how often the view ran."""

    def post(self, request):
        data = EchoInput(data=request.data)
        data.is_valid(raise_exception=True)
        if data.validated_data["name"] == "slow":
            time.sleep(0.5)
        if data.validated_data["name"] == "explode":
            raise RuntimeError("secret internal detail")
        job = job_create(
            kind="test.echo",
            org=getattr(request, "org", None),
            actor=request.user,
            payload=dict(data.validated_data),
            enqueue=False,
        )
        return Response({"id": str(job.pk), "name": job.payload["name"]}, status=201)


class BoomView(APIView):
    def get(self, request):
        raise RuntimeError("secret internal detail")


class ForbiddenView(APIView):
    def get(self, request):
        raise PermissionDenied


class MissingView(APIView):
    def get(self, request):
        raise NotFoundError("Widget not found.")


class ConflictView(APIView):
    def post(self, request):
        raise ApplicationError("Already done.", code="ERR_ALREADY_DONE", status_code=409)


class UploadView(APIView):
    parser_classes = [MultiPartParser]
    max_body_size = 5 * 1024 * 1024

    def post(self, request):
        upload = request.FILES["file"]
        return Response({"size": upload.size}, status=201)


class JobListSerializer(serializers.ModelSerializer):
    class Meta:
        model = Job
        fields = ["id", "kind", "created_at"]


class JobList(generics.ListAPIView):
    serializer_class = JobListSerializer

    def get_queryset(self):
        return Job.objects.filter(org=self.request.org).order_by("-created_at", "-id")


class JobCursorPagination(CursorPagination):
    ordering = ("-created_at", "-id")
    page_size = 3


class JobCursorList(JobList):
    pagination_class = JobCursorPagination


@require_POST
def plain_post_only(request):
    return HttpResponse("ok")


def session_write(request):
    """Stores a value in the session and queues a message (both saved by their middleware)."""
    request.session["note"] = request.GET.get("note", "hello")
    messages.info(request, "saved")
    return HttpResponse("ok")


def session_read(request):
    """Reads the session back, and the messages queued by the last request."""
    queued = [str(message) for message in messages.get_messages(request)]
    return HttpResponse(f"{request.session.get('note', '')}|{','.join(queued)}")


@ensure_csrf_cookie
def csrf_cookie(request):
    return HttpResponse("ok")


def csrf_checked_post(request):
    return HttpResponse("posted" if request.method == "POST" else "ok")


test_patterns = [
    path("echo", EchoView.as_view()),
    path("boom", BoomView.as_view()),
    path("forbidden", ForbiddenView.as_view()),
    path("missing", MissingView.as_view()),
    path("conflict", ConflictView.as_view()),
    path("upload", UploadView.as_view()),
    path("jobs", JobList.as_view()),
    path("jobs-cursor", JobCursorList.as_view()),
    path("plain", plain_post_only),
    path("session-write", session_write),
    path("session-read", session_read),
    path("csrf-cookie", csrf_cookie),
    path("csrf-post", csrf_checked_post),
]

urlpatterns = [path("api/v1/_test/", include(test_patterns))]
