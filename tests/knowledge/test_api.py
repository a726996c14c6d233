"""The knowledge API: KBs, documents (multipart and JSON), chunks, search, reindex, admin/rag;
roles, API key scopes, and another org's ids answering 404 on every route."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from accounts.models import Role
from accounts.services.keys import api_key_create
from core import quotas
from core.errors import PermissionDeniedError
from core.models import Job
from knowledge.models import Document, KnowledgeBase
from knowledge.services.bases import kb_create
from tests.core.test_errors import assert_envelope
from tests.factories import MembershipFactory

from .conftest import run_pending_jobs
from .files import make_docx, make_pdf, make_zip_bomb_docx

URL = "/api/v1/knowledge"


def kb_url(kb, suffix=""):
    return f"{URL}/{kb['id'] if isinstance(kb, dict) else kb.pk}{suffix}"


@pytest.fixture
def viewer_client(org):
    from tests.conftest import client_for

    return client_for(MembershipFactory(org=org, role=Role.VIEWER).user)


@pytest.fixture
def admin_client(org):
    from tests.conftest import client_for

    return client_for(MembershipFactory(org=org, role=Role.ADMIN).user)


def create_kb(client, **fields):
    response = client.post(URL, {"name": "Handbook", **fields}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def add_text(client, kb, title="Otters", text="Sea otters hold hands while they sleep."):
    response = client.post(kb_url(kb, "/documents"), {"title": title, "text": text}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


# --- knowledge bases -----------------------------------------------------------------------------


def test_member_creates_lists_reads_updates_and_deletes_a_kb(member_client):
    kb = create_kb(member_client, chunk_size=128, chunk_overlap=16, language="english")
    assert kb["chunk_size"] == 128 and kb["embedding_backend"] == "none"
    assert kb["status"]["state"] == "keyword_only" and kb["status"]["search_modes"] == ["hybrid", "keyword"]

    listed = member_client.get(URL).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == kb["id"]
    assert member_client.get(kb_url(kb)).json()["name"] == "Handbook"

    changed = member_client.patch(kb_url(kb), {"description": "How we work"}, format="json")
    assert changed.status_code == 200 and changed.json()["description"] == "How we work"

    assert member_client.delete(kb_url(kb)).status_code == 204
    assert_envelope(member_client.get(kb_url(kb)), 404, "ERR_KB_NOT_FOUND")


def test_kb_settings_are_validated(member_client):
    assert_envelope(
        member_client.post(URL, {"name": "x", "chunk_size": 64, "chunk_overlap": 64}, format="json"), 400
    )
    assert_envelope(member_client.post(URL, {"name": "x", "language": "klingon"}, format="json"), 400)
    assert_envelope(member_client.post(URL, {"name": "x", "embedding_backend": "magic"}, format="json"), 400)
    assert_envelope(member_client.post(URL, {}, format="json"), 400)
    assert not KnowledgeBase.objects.exists()


def test_local_backend_when_absent_is_a_clear_400(member_client, monkeypatch):
    from knowledge.services import bases

    monkeypatch.setattr(bases, "local_available", lambda: False)
    response = member_client.post(URL, {"name": "x", "embedding_backend": "local"}, format="json")
    assert_envelope(response, 400, "ERR_EMBEDDING_UNAVAILABLE")


def test_viewer_reads_and_searches_but_cannot_write(viewer_client, org, owner):
    kb = kb_create(org=org, actor=owner, name="Handbook")
    assert viewer_client.get(URL).status_code == 200
    assert viewer_client.post(kb_url(kb, "/search"), {"query": "otters"}, format="json").status_code == 200
    assert_envelope(viewer_client.post(URL, {"name": "x"}, format="json"), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(viewer_client.get(kb_url(kb, "/documents")), 403, "ERR_ROLE_REQUIRED")


def test_hidden_memory_kbs_are_not_listed_nor_reachable(member_client, org, owner):
    hidden = kb_create(org=org, actor=owner, name="mem", kind=KnowledgeBase.Kind.AGENT_MEMORY)
    assert member_client.get(URL).json()["total"] == 0
    assert_envelope(member_client.get(kb_url(hidden)), 404)


def test_plan_limit_refuses_a_kb(member_client):
    def deny(*, org, resource, adding):
        if resource == "knowledge_bases":
            raise PermissionDeniedError("Plan limit.", code="ERR_PLAN_LIMIT")

    quotas.register_limit_checker(deny)
    try:
        assert_envelope(member_client.post(URL, {"name": "x"}, format="json"), 403, "ERR_PLAN_LIMIT")
    finally:
        quotas._checkers.remove(deny)


def test_plan_limit_on_storage_refuses_a_document(member_client):
    kb = create_kb(member_client)

    def deny(*, org, resource, adding):
        if resource == "kb_storage_bytes" and adding > 10:
            raise PermissionDeniedError("Storage full.", code="ERR_PLAN_LIMIT")

    quotas.register_limit_checker(deny)
    try:
        response = member_client.post(
            kb_url(kb, "/documents"), {"title": "t", "text": "x" * 50}, format="json"
        )
        assert_envelope(response, 403, "ERR_PLAN_LIMIT")
    finally:
        quotas._checkers.remove(deny)
    assert not Document.objects.exists()


# --- documents -----------------------------------------------------------------------------------


def test_text_document_is_accepted_then_ready_and_its_job_is_followable(member_client):
    kb = create_kb(member_client)
    created = add_text(member_client, kb)
    assert created["status"] == "pending" and created["job"] and created["duplicate"] is False

    run_pending_jobs()

    document = member_client.get(kb_url(kb, f"/documents/{created['id']}")).json()
    assert document["status"] == "ready" and document["chunk_count"] >= 1
    job = member_client.get(f"/api/v1/jobs/{created['job']}").json()
    assert job["status"] == "succeeded" and job["percent"] == 100
    listed = member_client.get(kb_url(kb, "/documents")).json()
    assert listed["total"] == 1 and listed["items"][0]["title"] == "Otters"
    assert member_client.get(kb_url(kb, "/documents?status=failed")).json()["total"] == 0
    chunks = member_client.get(kb_url(kb, f"/documents/{created['id']}/chunks")).json()
    assert chunks["total"] == document["chunk_count"] and chunks["items"][0]["seq"] == 0


def test_multipart_uploads_of_every_type(member_client):
    kb = create_kb(member_client)
    files = {
        "a.pdf": make_pdf(["Otters sleep holding hands."]),
        "b.docx": make_docx([("Beavers", "Beavers build dams.")]),
        "c.html": b"<html><body><h1>Volcano</h1><p>Lava cools into basalt.</p></body></html>",
        "d.md": b"# Bread\nSourdough rises slowly.",
        "e.txt": b"Comets have icy tails.",
        "f.csv": b"planet,moons\nMars,2\nEarth,1\n",
        "g.json": b'{"planet": "Jupiter", "moons": 95}',
    }
    for name, data in files.items():
        response = member_client.post(
            kb_url(kb, "/documents"), {"file": SimpleUploadedFile(name, data)}, format="multipart"
        )
        assert response.status_code == 202, (name, response.content)
        assert response.json()["filename"] == name
    run_pending_jobs()
    states = {d.filename: (d.status, d.file_type) for d in Document.objects.all()}
    assert states == {
        "a.pdf": ("ready", "pdf"),
        "b.docx": ("ready", "docx"),
        "c.html": ("ready", "html"),
        "d.md": ("ready", "markdown"),
        "e.txt": ("ready", "text"),
        "f.csv": ("ready", "csv"),
        "g.json": ("ready", "json"),
    }
    hit = member_client.post(kb_url(kb, "/search"), {"query": "basalt"}, format="json").json()["items"][0]
    assert hit["title"] == "c.html"


def test_html_named_pdf_and_zip_bomb_are_refused_with_clear_codes(member_client):
    kb = create_kb(member_client)
    html = b"<!doctype html><html><body><p>not a pdf</p></body></html>"
    response = member_client.post(
        kb_url(kb, "/documents"), {"file": SimpleUploadedFile("invoice.pdf", html)}, format="multipart"
    )
    assert_envelope(response, 400, "ERR_FILE_TYPE_MISMATCH")
    response = member_client.post(
        kb_url(kb, "/documents"),
        {"file": SimpleUploadedFile("report.docx", make_zip_bomb_docx())},
        format="multipart",
    )
    assert_envelope(response, 400, "ERR_UNSAFE_ARCHIVE")
    assert not Document.objects.exists()


def test_bad_document_bodies_are_400(member_client):
    kb = create_kb(member_client)
    assert_envelope(member_client.post(kb_url(kb, "/documents"), {"title": "x"}, format="json"), 400)
    assert_envelope(member_client.post(kb_url(kb, "/documents"), {"text": "   "}, format="json"), 400)
    assert_envelope(member_client.post(kb_url(kb, "/documents"), {"title": "x"}, format="multipart"), 400)
    response = member_client.post(kb_url(kb, "/documents"), {"url": "http://127.0.0.1/secret"}, format="json")
    assert_envelope(response, 400, "ERR_OUTBOUND_BLOCKED")
    assert not Document.objects.exists()


def test_the_same_upload_twice_answers_the_first_document(member_client):
    kb = create_kb(member_client)
    first = add_text(member_client, kb)
    again = add_text(member_client, kb, title="Again")
    assert again["id"] == first["id"] and again["duplicate"] is True
    assert member_client.get(kb_url(kb, "/documents")).json()["total"] == 1


def test_failed_document_retry_and_conflict(member_client):
    kb = create_kb(member_client)
    response = member_client.post(
        kb_url(kb, "/documents"), {"file": SimpleUploadedFile("x.pdf", b"%PDF-1.4 junk")}, format="multipart"
    )
    document = response.json()
    run_pending_jobs()
    failed = member_client.get(kb_url(kb, f"/documents/{document['id']}")).json()
    assert failed["status"] == "failed" and failed["error_code"].startswith("ERR_")

    retried = member_client.post(kb_url(kb, f"/documents/{document['id']}/retry"))
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    assert retried.json()["job"] != document["job"]
    assert_envelope(member_client.post(kb_url(kb, f"/documents/{document['id']}/retry")), 409)


def test_document_delete(member_client):
    kb = create_kb(member_client)
    document = add_text(member_client, kb)
    assert member_client.delete(kb_url(kb, f"/documents/{document['id']}")).status_code == 204
    assert_envelope(member_client.get(kb_url(kb, f"/documents/{document['id']}")), 404)


# --- search and reindex --------------------------------------------------------------------------


def test_search_answers_ranked_items_with_the_contract_fields(member_client):
    kb = create_kb(member_client)
    add_text(member_client, kb)
    add_text(member_client, kb, title="Beavers", text="Beavers build dams across rivers.")
    run_pending_jobs()
    response = member_client.post(kb_url(kb, "/search"), {"query": "beavers dams", "top_k": 5}, format="json")
    assert response.status_code == 200
    body = response.json()
    first = body["items"][0]
    assert {"document_id", "chunk_id", "score", "text", "snippet", "page", "title"} <= set(first)
    assert first["title"] == "Beavers" and body["mode_used"] == "keyword"
    assert_envelope(member_client.post(kb_url(kb, "/search"), {"query": ""}, format="json"), 400)
    assert_envelope(
        member_client.post(kb_url(kb, "/search"), {"query": "x", "mode": "y"}, format="json"), 400
    )
    assert_envelope(
        member_client.post(kb_url(kb, "/search"), {"query": "x", "mode": "vector"}, format="json"), 400
    )


def test_search_with_provider_vectors_and_filters(member_client, provider):
    kb = create_kb(member_client, embedding_backend="provider", embedding_model="fake-embed")
    assert kb["status"]["state"] == "ready" and kb["active_index"]["backend"] == "provider"
    otters = add_text(member_client, kb)
    add_text(member_client, kb, title="Beavers", text="Beavers build dams across rivers.")
    run_pending_jobs()
    body = member_client.post(
        kb_url(kb, "/search"),
        {"query": "hold hands", "mode": "vector", "filters": {"document_ids": [otters["id"]]}},
        format="json",
    ).json()
    assert [item["document_id"] for item in body["items"]] == [otters["id"]]
    assert body["index_version"] == kb["active_index"]["id"]


def test_reindex_builds_a_new_version_and_switches(member_client, provider):
    kb = create_kb(member_client, embedding_backend="provider", embedding_model="fake-embed")
    add_text(member_client, kb)
    run_pending_jobs()
    response = member_client.post(kb_url(kb, "/reindex"), {}, format="json")
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["index_version"] != kb["active_index"]["id"]
    run_pending_jobs()
    assert Job.objects.get(pk=accepted["job"]).status == "succeeded"
    assert member_client.get(kb_url(kb)).json()["active_index"]["id"] == accepted["index_version"]


def test_reindex_of_a_keyword_only_kb_and_rechunking(member_client):
    kb = create_kb(member_client)
    add_text(member_client, kb)
    run_pending_jobs()
    member_client.patch(kb_url(kb), {"chunk_size": 32, "chunk_overlap": 4}, format="json")
    response = member_client.post(kb_url(kb, "/reindex"), {"rechunk": True}, format="json")
    assert response.status_code == 202 and response.json()["documents_requeued"] == 1
    run_pending_jobs()
    assert Document.objects.get().status == "ready"


# --- admin/rag -----------------------------------------------------------------------------------


def test_admin_rag_status_and_owner_backfill(admin_client, owner_client, member_client, provider, org, owner):
    kb = kb_create(org=org, actor=owner, name="V", embedding_backend="provider", embedding_model="fail-500")
    add_text(owner_client, kb)
    run_pending_jobs()
    stats = admin_client.get("/api/v1/admin/rag").json()
    assert stats["documents"]["ready"] == 1 and stats["chunks_missing_vectors"] >= 1
    assert stats["index_versions"][0]["kb_id"] == str(kb.pk)
    assert_envelope(member_client.get("/api/v1/admin/rag"), 403)
    assert_envelope(admin_client.post("/api/v1/admin/rag"), 403)

    # the provider works again (a model that answers): the backfill embeds what is missing
    KnowledgeBase.objects.filter(pk=kb.pk).update(embedding_model="fake-embed")
    kb.active_index.__class__.objects.filter(pk=kb.active_index_id).update(model="fake-embed")
    response = owner_client.post("/api/v1/admin/rag")
    assert response.status_code == 202
    run_pending_jobs()
    assert Job.objects.get(pk=response.json()["job"]).result["embedded"] >= 1
    assert admin_client.get("/api/v1/admin/rag").json()["chunks_missing_vectors"] == 0
    assert Document.objects.get().embedded is True


# --- tenancy, auth, keys -------------------------------------------------------------------------


def test_another_orgs_kb_and_documents_answer_404_everywhere(member_client, outsider_client):
    kb = create_kb(member_client)
    document = add_text(member_client, kb)
    routes = [
        ("get", kb_url(kb)),
        ("patch", kb_url(kb)),
        ("delete", kb_url(kb)),
        ("post", kb_url(kb, "/search")),
        ("post", kb_url(kb, "/reindex")),
        ("get", kb_url(kb, "/documents")),
        ("post", kb_url(kb, "/documents")),
        ("get", kb_url(kb, f"/documents/{document['id']}")),
        ("delete", kb_url(kb, f"/documents/{document['id']}")),
        ("post", kb_url(kb, f"/documents/{document['id']}/retry")),
        ("get", kb_url(kb, f"/documents/{document['id']}/chunks")),
    ]
    for method, url in routes:
        response = getattr(outsider_client, method)(
            url, {"query": "x", "name": "y", "text": "z"}, format="json"
        )
        assert_envelope(response, 404)
    assert outsider_client.get(URL).json()["total"] == 0
    # a document of one KB is not reachable under another KB of the same org
    other = create_kb(member_client)
    assert_envelope(member_client.get(kb_url(other, f"/documents/{document['id']}")), 404)
    assert_envelope(member_client.get(kb_url({"id": uuid.uuid4()})), 404)


def test_anonymous_callers_get_401(anon_client, org, owner):
    kb = kb_create(org=org, actor=owner, name="x")
    assert_envelope(anon_client.get(URL), 401)
    assert_envelope(anon_client.post(kb_url(kb, "/search"), {"query": "x"}, format="json"), 401)
    assert_envelope(anon_client.get("/api/v1/admin/rag"), 401)


def test_api_key_scopes_are_enforced(org, owner):
    kb = kb_create(org=org, actor=owner, name="x")
    _key, raw = api_key_create(org=org, actor=owner, name="ro", scopes=["knowledge:read"])
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get(URL).status_code == 200
    # search is a read, although a POST
    assert (
        client.post(kb_url(kb, "/search"), {"query": "x"}, content_type="application/json").status_code == 200
    )
    response = client.post(
        kb_url(kb, "/documents"), {"title": "t", "text": "x"}, content_type="application/json"
    )
    assert_envelope(response, 403, "ERR_SCOPE_REQUIRED")


def test_uploads_above_the_general_1mb_body_limit_are_accepted(member_client):
    kb = create_kb(member_client)
    data = ("Otters hold hands. " * 120_000).encode()  # ~2.3 MB
    response = member_client.post(
        kb_url(kb, "/documents"), {"file": SimpleUploadedFile("big.txt", data)}, format="multipart"
    )
    assert response.status_code == 202, response.content
    assert response.json()["size_bytes"] == len(data)


def test_switching_backend_takes_the_new_backends_default_model(member_client, provider):
    kb = create_kb(member_client, embedding_backend="provider", embedding_model="fake-embed")
    changed = member_client.patch(kb_url(kb), {"embedding_backend": "none"}, format="json").json()
    assert (changed["embedding_backend"], changed["embedding_model"]) == ("none", "")
    changed = member_client.patch(kb_url(kb), {"embedding_backend": "provider"}, format="json").json()
    assert changed["embedding_model"] == "text-embedding-3-small"
