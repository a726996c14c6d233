"""API of `knowledge`: knowledge bases, documents, chunks, search, reindex and the RAG admin view.

- ``/api/v1/knowledge[/{kb}]``: KBs (VIEWER reads, MEMBER writes); only ``standard`` KBs appear.
- ``/api/v1/knowledge/{kb}/documents[/{doc}]`` (MEMBER): multipart ``file`` or JSON ``{title, text}``
  / ``{url}`` → 202 ``{id, status, job, …}``; ``…/{doc}/retry`` re-queues a failed one;
  ``…/{doc}/chunks`` lists its chunks.
- ``/api/v1/knowledge/{kb}/search`` (VIEWER): ``{query, top_k?, mode?, filters?}`` → ranked chunks.
- ``/api/v1/knowledge/{kb}/reindex`` (MEMBER): 202 + job.
- ``/api/v1/admin/rag``: GET (ADMIN) counts, stuck documents, index versions; POST (OWNER) backfill.

Another org's KB or document answers 404. Through an API key these need ``knowledge:read`` /
``knowledge:write``.
"""

from __future__ import annotations

import json
import time

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import ApiKey, Role
from accounts.permissions import HasOrgRole, scope_allows
from accounts.services.audit import audit_record
from core.errors import PermissionDeniedError, ValidationError
from core.services import job_create
from knowledge import selectors
from knowledge.embeddings import local_available
from knowledge.models import Document, KnowledgeBase
from knowledge.parsing import MAX_UPLOAD_BYTES, FileTooLarge
from knowledge.search import run_search
from knowledge.services import bases as kb_services
from knowledge.services import documents as document_services

from .serializers import (
    ChunkOutputSerializer,
    DocumentCreatedSerializer,
    DocumentOutputSerializer,
    DocumentTextInputSerializer,
    DocumentUploadInputSerializer,
    JobAcceptedSerializer,
    KnowledgeBaseInputSerializer,
    KnowledgeBaseOutputSerializer,
    RagStatsSerializer,
    ReindexInputSerializer,
    SearchInputSerializer,
    SearchOutputSerializer,
)

_TAGS = ["knowledge"]
UPLOAD_BODY_LIMIT = MAX_UPLOAD_BYTES + 64 * 1024
_STATUS_PARAM = OpenApiParameter(
    "status", str, enum=Document.Status.values, required=False, description="Only documents in this state."
)


class SearchKeyScope(BasePermission):
    """Search is a read although it is a POST: an API key needs ``knowledge:read`` for it."""

    def has_permission(self, request, view) -> bool:
        key = request.auth if isinstance(request.auth, ApiKey) else None
        if key is None or scope_allows(key.scopes or [], "knowledge", write=False):
            return True
        raise PermissionDeniedError(
            "This API key lacks the knowledge:read scope.",
            code="ERR_SCOPE_REQUIRED",
            details={"required_scope": "knowledge:read"},
        )


class KnowledgeBaseViewSet(TenantViewSet):
    """``/api/v1/knowledge`` and the per-KB routes."""

    queryset = KnowledgeBase.objects.all()
    serializer_class = KnowledgeBaseOutputSerializer
    read_role = Role.VIEWER
    write_role = Role.MEMBER
    action_roles = {"search": Role.VIEWER, "reindex": Role.MEMBER}
    scope_area = "knowledge"

    def base_queryset(self):
        return selectors.kb_list(org=self.request.org)

    def get_permissions(self):
        if getattr(self, "action", None) == "search":
            return [IsAuthenticated(), HasOrgRole(), SearchKeyScope()]
        return super().get_permissions()

    def _kb(self, id) -> KnowledgeBase:
        return selectors.kb_get(org=self.request.org, kb_id=id)

    @extend_schema(
        operation_id="knowledge_list",
        tags=_TAGS,
        summary="Knowledge bases of the org.",
        parameters=[OpenApiParameter("q", str, required=False, description="Part of the name.")],
        responses=KnowledgeBaseOutputSerializer(many=True),
    )
    def list(self, request):
        rows = selectors.kb_list(org=request.org, search=request.query_params.get("q") or None)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(KnowledgeBaseOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="knowledge_create",
        tags=_TAGS,
        summary="Create a knowledge base.",
        description=(
            "`chunk_size`/`chunk_overlap` are tokens (overlap < size). `embedding_backend`: `none` (keyword "
            "search only), `provider` (the org's provider /v1/embeddings) or `local` (offline model, when "
            "installed: 400 `ERR_EMBEDDING_UNAVAILABLE` otherwise). Plan limits answer 403 `ERR_PLAN_LIMIT`."
        ),
        request=KnowledgeBaseInputSerializer,
        responses={201: KnowledgeBaseOutputSerializer},
    )
    def create(self, request):
        body = KnowledgeBaseInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        kb = kb_services.kb_create(org=request.org, actor=request.user, **body.validated_data)
        return Response(KnowledgeBaseOutputSerializer(self._kb(kb.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(operation_id="knowledge_retrieve", tags=_TAGS, responses=KnowledgeBaseOutputSerializer)
    def retrieve(self, request, id):
        return Response(KnowledgeBaseOutputSerializer(self._kb(id)).data)

    @extend_schema(
        operation_id="knowledge_partial_update",
        tags=_TAGS,
        summary="Change a knowledge base's settings.",
        description=(
            "A new embedding backend or model builds a new index version in a job (see `status.building`); "
            "the current version keeps answering searches until the new one is complete, then the KB "
            "switches at once. New chunk settings apply to documents ingested from now on (reindex with "
            "`rechunk` to apply them to all)."
        ),
        request=KnowledgeBaseInputSerializer(partial=True),
        responses=KnowledgeBaseOutputSerializer,
    )
    def partial_update(self, request, id):
        kb = self._kb(id)
        body = KnowledgeBaseInputSerializer(data=request.data, partial=True)
        body.is_valid(raise_exception=True)
        kb_services.kb_update(kb=kb, actor=request.user, **body.validated_data)
        return Response(KnowledgeBaseOutputSerializer(self._kb(id)).data)

    @extend_schema(
        operation_id="knowledge_destroy",
        tags=_TAGS,
        summary="Delete a knowledge base with its documents, chunks and vectors.",
        responses={204: OpenApiResponse(description="Deleted.")},
    )
    def destroy(self, request, id):
        kb_services.kb_delete(kb=self._kb(id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="knowledge_search",
        tags=_TAGS,
        summary="Search a knowledge base (hybrid, vector or keyword).",
        description=(
            "Best first. Hybrid fuses the keyword ranking (full-text index) and the vector ranking "
            "(cosine) by reciprocal rank fusion; without a serving vector index it answers from "
            "keywords alone (`mode_used`). `mode: vector` without an index answers 400 "
            "`ERR_NO_VECTOR_INDEX`. Filters: `document_ids`, `metadata` (document metadata, exact match)."
        ),
        request=SearchInputSerializer,
        responses=SearchOutputSerializer,
    )
    def search(self, request, id):
        kb = self._kb(id)
        body = SearchInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        filters = data.get("filters") or None
        if filters and filters.get("document_ids") is not None:
            filters = {**filters, "document_ids": [str(value) for value in filters["document_ids"]]}
        started = time.perf_counter()
        result = run_search(
            kb=kb, query=data["query"], top_k=data["top_k"], mode=data["mode"], filters=filters
        )
        return Response(
            {
                "items": [hit.as_dict() for hit in result.hits],
                "mode": result.mode,
                "mode_used": result.mode_used,
                "index_version": result.index_version,
                "notes": result.notes,
                "took_ms": round((time.perf_counter() - started) * 1000, 2),
            }
        )

    @extend_schema(
        operation_id="knowledge_reindex",
        tags=_TAGS,
        summary="Rebuild the KB's indexes (202 + job).",
        description=(
            "Refreshes the full-text index and builds a fresh vector index version with the current "
            "embedding settings (the current one serves until it is complete). `rechunk: true` also "
            "re-ingests every document with the current chunk settings. Follow the job at /api/v1/jobs/{id}."
        ),
        request=ReindexInputSerializer,
        responses={202: JobAcceptedSerializer},
    )
    def reindex(self, request, id):
        kb = self._kb(id)
        body = ReindexInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        outcome = kb_services.kb_reindex(kb=kb, actor=request.user, rechunk=body.validated_data["rechunk"])
        job = outcome["job"]
        return Response(
            {
                "job": job.pk,
                "status": job.status,
                "index_version": outcome["index_version"].pk if outcome["index_version"] else None,
                "documents_requeued": outcome["documents_requeued"],
            },
            status=status.HTTP_202_ACCEPTED,
        )


class DocumentViewSet(TenantViewSet):
    """``/api/v1/knowledge/{kb}/documents`` and the per-document routes (MEMBER)."""

    queryset = Document.objects.all()
    serializer_class = DocumentOutputSerializer
    read_role = Role.MEMBER
    write_role = Role.MEMBER
    scope_area = "knowledge"
    parser_classes = [JSONParser, MultiPartParser, FormParser]
    max_body_size = UPLOAD_BODY_LIMIT

    def base_queryset(self):
        return Document.objects.select_related("job")

    def _kb(self, kb_id) -> KnowledgeBase:
        return selectors.kb_get(org=self.request.org, kb_id=kb_id)

    def _document(self, kb_id, id) -> Document:
        return selectors.document_get(org=self.request.org, kb=self._kb(kb_id), document_id=id)

    @extend_schema(
        operation_id="knowledge_documents_list",
        tags=_TAGS,
        summary="Documents of a knowledge base, newest first.",
        parameters=[_STATUS_PARAM],
        responses=DocumentOutputSerializer(many=True),
    )
    def list(self, request, kb_id):
        state = request.query_params.get("status") or None
        if state is not None and state not in Document.Status.values:
            raise ValidationError(f"status must be one of {', '.join(Document.Status.values)}.")
        rows = selectors.document_list(org=request.org, kb=self._kb(kb_id), status=state)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(DocumentOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="knowledge_documents_create",
        tags=_TAGS,
        summary="Add a document: multipart `file`, or JSON `{title, text}` or `{url}` (202 + job).",
        description=(
            "Files: txt, md, html, pdf, docx, csv, json, at most 50 MB, recognised by their content: a name "
            "that disagrees with the content answers 400 `ERR_FILE_TYPE_MISMATCH`, an archive that inflates "
            "too far `ERR_UNSAFE_ARCHIVE`, other content `ERR_UNSUPPORTED_FILE`. URLs are fetched by the "
            "worker through the outbound guard. Ingestion runs in the background: follow `job` at "
            "/api/v1/jobs/{id}[/stream] or poll the document (`pending → processing → ready | failed`). "
            "Content the KB already holds is not ingested again: the existing document is answered with "
            "`duplicate: true`."
        ),
        request={
            "multipart/form-data": DocumentUploadInputSerializer,
            "application/json": DocumentTextInputSerializer,
        },
        responses={202: DocumentCreatedSerializer},
    )
    def create(self, request, kb_id):
        kb = self._kb(kb_id)
        upload = request.FILES.get("file")
        if upload is not None:
            body = DocumentUploadInputSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            if upload.size > MAX_UPLOAD_BYTES:
                raise FileTooLarge(details={"limit_bytes": MAX_UPLOAD_BYTES, "size_bytes": upload.size})
            metadata = body.validated_data.get("metadata")
            if isinstance(metadata, str):
                try:
                    metadata = json.loads(metadata)
                except ValueError as exc:
                    raise ValidationError("metadata: Must be a JSON object.") from exc
            created = document_services.document_create_from_upload(
                kb=kb,
                actor=request.user,
                data=upload.read(),
                filename=upload.name or "",
                title=body.validated_data.get("title") or "",
                metadata=metadata,
            )
        else:
            if request.content_type and request.content_type.startswith("multipart/"):
                raise ValidationError(
                    "file: Send the document as the multipart field `file`.",
                    details={"fields": {"file": ["No file was submitted."]}},
                )
            body = DocumentTextInputSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            data = body.validated_data
            if data.get("url"):
                created = document_services.document_create_from_url(
                    kb=kb, actor=request.user, url=data["url"], title=data.get("title") or "",
                    metadata=data.get("metadata"),
                )  # fmt: skip
            else:
                created = document_services.document_create_text(
                    kb=kb, actor=request.user, title=data.get("title") or "", text=data["text"],
                    metadata=data.get("metadata"), file_type=data.get("format") or "text",
                )  # fmt: skip
        document = Document.objects.select_related("job").get(pk=created.document.pk)
        document.duplicate = created.duplicate
        return Response(DocumentCreatedSerializer(document).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="knowledge_documents_retrieve", tags=_TAGS, responses=DocumentOutputSerializer
    )
    def retrieve(self, request, kb_id, id):
        return Response(DocumentOutputSerializer(self._document(kb_id, id)).data)

    @extend_schema(
        operation_id="knowledge_documents_destroy",
        tags=_TAGS,
        summary="Delete a document with its chunks, vectors and stored file.",
        responses={204: OpenApiResponse(description="Deleted.")},
    )
    def destroy(self, request, kb_id, id):
        document_services.document_delete(document=self._document(kb_id, id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="knowledge_documents_retry",
        tags=_TAGS,
        summary="Queue a failed document again (202 + job); 409 `ERR_DOCUMENT_NOT_FAILED` otherwise.",
        request=None,
        responses={202: DocumentOutputSerializer},
    )
    def retry(self, request, kb_id, id):
        document = document_services.document_retry(document=self._document(kb_id, id), actor=request.user)
        document = Document.objects.select_related("job").get(pk=document.pk)
        return Response(DocumentOutputSerializer(document).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="knowledge_documents_chunks",
        tags=_TAGS,
        summary="A document's chunks in reading order.",
        responses=ChunkOutputSerializer(many=True),
    )
    def chunks(self, request, kb_id, id):
        rows = selectors.chunk_list(org=request.org, document=self._document(kb_id, id))
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(ChunkOutputSerializer(page, many=True).data)


class RagAdminView(TenantAPIView):
    """``/api/v1/admin/rag``: index status of the org (ADMIN) and the embedding backfill (OWNER)."""

    method_roles = {"GET": Role.ADMIN, "POST": Role.OWNER}
    scope_area = "knowledge"

    @extend_schema(
        operation_id="admin_rag_status",
        tags=_TAGS,
        summary="Documents per state, stuck documents, index versions and missing vectors (ADMIN).",
        responses=RagStatsSerializer,
    )
    def get(self, request):
        stats = selectors.rag_stats(org=request.org)
        stats["local_backend_available"] = local_available()
        return Response(RagStatsSerializer(stats).data)

    @extend_schema(
        operation_id="admin_rag_backfill",
        tags=_TAGS,
        summary="Embed every chunk that its KB's serving index lacks (OWNER; 202 + job).",
        request=None,
        responses={202: JobAcceptedSerializer},
    )
    def post(self, request):
        job = job_create(
            kind="knowledge.backfill", org=request.org, actor=request.user, message="Backfilling embeddings"
        )
        audit_record(org=request.org, actor=request.user, action="knowledge.backfill", entity=job)
        return Response({"job": job.pk, "status": job.status}, status=status.HTTP_202_ACCEPTED)


_kbs = KnowledgeBaseViewSet.as_view({"get": "list", "post": "create"})
_kb = KnowledgeBaseViewSet.as_view({"get": "retrieve", "patch": "partial_update", "delete": "destroy"})
_documents = DocumentViewSet.as_view({"get": "list", "post": "create"})
_document = DocumentViewSet.as_view({"get": "retrieve", "delete": "destroy"})

urlpatterns = [
    path("knowledge", _kbs, name="knowledge"),
    path("knowledge/<uuid:id>", _kb, name="knowledge-detail"),
    path(
        "knowledge/<uuid:id>/search",
        KnowledgeBaseViewSet.as_view({"post": "search"}),
        name="knowledge-search",
    ),
    path(
        "knowledge/<uuid:id>/reindex",
        KnowledgeBaseViewSet.as_view({"post": "reindex"}),
        name="knowledge-reindex",
    ),
    path("knowledge/<uuid:kb_id>/documents", _documents, name="knowledge-documents"),
    path("knowledge/<uuid:kb_id>/documents/<uuid:id>", _document, name="knowledge-document"),
    path(
        "knowledge/<uuid:kb_id>/documents/<uuid:id>/retry",
        DocumentViewSet.as_view({"post": "retry"}),
        name="knowledge-document-retry",
    ),
    path(
        "knowledge/<uuid:kb_id>/documents/<uuid:id>/chunks",
        DocumentViewSet.as_view({"get": "chunks"}),
        name="knowledge-document-chunks",
    ),
    path("admin/rag", RagAdminView.as_view(), name="admin-rag"),
]
