"""Routes of `core`: probes at the root, jobs under /api/v1/."""

from django.urls import path

from . import cron, views

probe_urlpatterns = [
    path("health", views.HealthView.as_view(), name="health"),
    path("ready", views.ReadyView.as_view(), name="ready"),
    path("version", views.VersionView.as_view(), name="version"),
    path("metrics", views.MetricsView.as_view(), name="metrics"),
    path("api/cron/<str:job>", cron.CronRunView.as_view(), name="cron-run"),
]

api_urlpatterns = [
    path("jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/stream", views.JobStreamView.as_view(), name="job-stream"),
]
