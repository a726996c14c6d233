"""Fixtures of the knowledge tests: media in a temporary folder, KBs, a provider on the fake
upstream for the ``provider`` embedding backend, and a helper that runs queued ingestion jobs."""

from __future__ import annotations

import json
import uuid

import pytest

from agents.llm import clear_resolution_cache
from agents.models import Provider
from core.models import Job
from core.tasks import run_job
from knowledge.models import Document
from knowledge.services.bases import kb_create


@pytest.fixture(autouse=True)
def _media(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.KNOWLEDGE_EMBED_BATCH = 8
    clear_resolution_cache()
    yield
    clear_resolution_cache()


@pytest.fixture
def kb(org, owner):
    return kb_create(org=org, actor=owner, name="Handbook")


@pytest.fixture
def provider(org, fake_upstream, allow_loopback, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.LLM_RETRY_BASE_SECONDS = 0.001
    return make_provider(org, fake_upstream)


def make_provider(org, upstream, **fields) -> Provider:
    headers = fields.pop("headers", None)
    return Provider.objects.create(
        org=org,
        name=fields.pop("name", f"p-{uuid.uuid4().hex[:8]}"),
        api_base=upstream.base_url,
        api_key=f"sk-{uuid.uuid4().hex}",
        extra_headers=json.dumps(headers) if headers else "",
        **fields,
    )


@pytest.fixture
def vector_kb(org, owner, provider):
    return kb_create(
        org=org, actor=owner, name="Vectors", embedding_backend="provider", embedding_model="fake-embed"
    )


def run_pending_jobs() -> int:
    """Run every pending job the way a worker would; returns how many ran."""
    ran = 0
    for job_id in list(
        Job.objects.filter(status=Job.Status.PENDING).order_by("created_at").values_list("pk", flat=True)
    ):
        run_job(str(job_id))
        ran += 1
    return ran


def ingest_all() -> None:
    run_pending_jobs()


def statuses() -> dict[str, str]:
    return {d.title: d.status for d in Document.objects.all()}
