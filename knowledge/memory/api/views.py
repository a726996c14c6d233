"""API of agent memory, the knowledge graph and episodic summaries, under ``/api/v1/agents/{id}/``.

- ``memory/documents`` (GET) · ``memory/documents/{path}`` (GET/PUT/DELETE) · ``memory/search`` (POST).
  ``?scope=user`` (or ``?user=me``) addresses the caller's own memory of the agent; the default is
  the memory the agent shares with everyone (``scope=agent``).
- ``kg/entities`` (GET/POST) · ``kg/entities/{eid}`` (GET/DELETE) · ``kg/entities/{eid}/merge`` ·
  ``kg/relations`` · ``kg/traverse`` · ``kg/extract`` (POST) · ``kg/export`` · ``kg/duplicates`` (GET).
- ``episodic`` (GET) · ``episodic/search`` (POST).

Every route needs MEMBER and, through an API key, the ``memory`` scope. The agent is looked up
first with the agents app's visibility rules: an agent the caller cannot see, or of another org,
answers 404 before the body is read; so does an entity of another agent or org.
"""

from __future__ import annotations

import uuid

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response

from accounts.api.base import TenantAPIView
from accounts.models import ApiKey, Role
from agents.models import Agent
from agents.selectors.agents import AgentViewer, agent_get
from core.errors import ValidationError
from core.pagination import LimitOffsetPagination

from ..selectors import episodic as episodic_selectors
from ..selectors import graph as graph_selectors
from ..selectors import memory as memory_selectors
from ..services import documents as memory_services
from ..services import graph as graph_services
from ..services.extraction import graph_extract
from . import serializers as s

_MEMORY = ["agent memory"]
_KG = ["knowledge graph"]
_EPISODIC = ["episodic memory"]

_PAGE_PARAMS = [
    OpenApiParameter("limit", OpenApiTypes.INT, required=False),
    OpenApiParameter("offset", OpenApiTypes.INT, required=False),
]
_SCOPE_PARAMS = [
    OpenApiParameter("scope", OpenApiTypes.STR, enum=["agent", "user"], required=False),
    OpenApiParameter(
        "user", OpenApiTypes.STR, enum=["me"], required=False, description="Same as scope=user."
    ),
]


class AgentScopedView(TenantAPIView):
    """A route under one agent: MEMBER, ``memory`` key scope, the agent visible to the caller."""

    scope_area = "memory"
    read_role = Role.MEMBER
    write_role = Role.MEMBER

    def agent(self, agent_id) -> Agent:
        request = self.request
        key = request.auth if isinstance(request.auth, ApiKey) else None
        bound = key.agent_id if key is not None and key.kind == ApiKey.Kind.AGENT else None
        viewer = AgentViewer(user=request.user, role=request.role, bound_agent_id=bound)
        return agent_get(org=request.org, viewer=viewer, agent_id=agent_id)

    def user_scope(self) -> str:
        """``agent`` or ``user`` from ``?scope=`` / ``?user=me`` (400 for anything else)."""
        params = self.request.query_params
        scope = params.get("scope") or ""
        who = params.get("user") or ""
        if who and who != "me":
            raise ValidationError("user may only be 'me'.", details={"user": ["Only 'me' is supported."]})
        if scope and scope not in ("agent", "user"):
            raise ValidationError("scope must be agent or user.", details={"scope": ["Unknown scope."]})
        if who == "me" and scope == "agent":
            raise ValidationError(
                "scope=agent contradicts user=me.", details={"scope": ["Contradicts user=me."]}
            )
        return "user" if who == "me" or scope == "user" else "agent"

    def scoped_user(self, scope: str):
        return self.request.user if scope == "user" else None

    def paginate(self, rows, serializer_class):
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(rows, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


# --- memory documents --------------------------------------------------------------------------


class MemoryDocumentListView(AgentScopedView):
    """The agent's memory documents of a scope (without their content), by path."""

    @extend_schema(
        operation_id="agents_memory_documents_list",
        tags=_MEMORY,
        parameters=[
            *_SCOPE_PARAMS,
            OpenApiParameter(
                "prefix", OpenApiTypes.STR, required=False, description="Only paths starting so."
            ),
            *_PAGE_PARAMS,
        ],
        responses=s.MemoryDocumentPageOutputSerializer,
    )
    def get(self, request, id):
        agent = self.agent(id)
        scope = self.user_scope()
        rows = memory_selectors.memory_document_list(
            org=request.org,
            agent=agent,
            user=request.user,
            scope=scope,
            prefix=request.query_params.get("prefix"),
        )
        return self.paginate(rows, s.MemoryDocumentOutputSerializer)


class MemoryDocumentDetailView(AgentScopedView):
    """One memory document by path: read, create or replace, delete."""

    def _row(self, request, id, path):
        agent = self.agent(id)
        scope = self.user_scope()
        path = memory_services.validate_path(path)
        return (
            agent,
            scope,
            memory_selectors.memory_document_get(
                org=request.org, agent=agent, user=request.user, path=path, scope=scope
            ),
        )

    @extend_schema(
        operation_id="agents_memory_documents_retrieve",
        tags=_MEMORY,
        parameters=_SCOPE_PARAMS,
        responses=s.MemoryDocumentDetailOutputSerializer,
    )
    def get(self, request, id, path):
        _, _, row = self._row(request, id, path)
        return Response(s.MemoryDocumentDetailOutputSerializer(row).data)

    @extend_schema(
        operation_id="agents_memory_documents_put",
        tags=_MEMORY,
        parameters=_SCOPE_PARAMS,
        request=s.MemoryDocumentPutInputSerializer,
        responses={200: s.MemoryDocumentDetailOutputSerializer, 201: s.MemoryDocumentDetailOutputSerializer},
        summary="Create (201) or replace (200) the document at path; old chunks go, new text is ingested.",
    )
    def put(self, request, id, path):
        agent = self.agent(id)
        scope = self.user_scope()
        path = memory_services.validate_path(path)
        data = s.MemoryDocumentPutInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        row, created = memory_services.memory_document_put(
            agent=agent,
            user=self.scoped_user(scope),
            path=path,
            content=data.validated_data["content"],
            actor=request.user,
        )
        row = memory_selectors.memory_document_get(
            org=request.org, agent=agent, user=request.user, path=row.path, scope=scope
        )
        return Response(
            s.MemoryDocumentDetailOutputSerializer(row).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        operation_id="agents_memory_documents_destroy",
        tags=_MEMORY,
        parameters=_SCOPE_PARAMS,
        responses={204: None},
    )
    def delete(self, request, id, path):
        _, _, row = self._row(request, id, path)
        memory_services.memory_document_delete(memory_document=row, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemorySearchView(AgentScopedView):
    """Search the agent's memory (shared, the caller's own, or both)."""

    @extend_schema(
        operation_id="agents_memory_search",
        tags=_MEMORY,
        request=s.MemorySearchInputSerializer,
        responses=s.MemorySearchOutputSerializer,
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.MemorySearchInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answer = memory_selectors.memory_search(
            org=request.org, agent=agent, user=request.user, **data.validated_data
        )
        return Response(s.MemorySearchOutputSerializer(answer).data)


# --- knowledge graph ---------------------------------------------------------------------------


def _entity_detail(entity) -> dict:
    data = s.EntityOutputSerializer(entity).data
    data["relations"] = s.RelationOutputSerializer(
        graph_selectors.entity_relations(entity=entity), many=True
    ).data
    return data


class EntityListView(AgentScopedView):
    """The agent's knowledge-graph entities; POST upserts one by normalised name or alias."""

    @extend_schema(
        operation_id="agents_kg_entities_list",
        tags=_KG,
        parameters=[
            OpenApiParameter("type", OpenApiTypes.STR, required=False),
            OpenApiParameter("q", OpenApiTypes.STR, required=False, description="In names and aliases."),
            *_PAGE_PARAMS,
        ],
        responses=s.EntityPageOutputSerializer,
    )
    def get(self, request, id):
        agent = self.agent(id)
        rows = graph_selectors.entity_list(
            org=request.org,
            agent=agent,
            type=request.query_params.get("type"),
            q=request.query_params.get("q"),
        )
        return self.paginate(rows, s.EntityOutputSerializer)

    @extend_schema(
        operation_id="agents_kg_entities_upsert",
        tags=_KG,
        request=s.EntityUpsertInputSerializer,
        responses={201: s.EntityDetailOutputSerializer, 200: s.EntityDetailOutputSerializer},
        summary="Create (201), or update (200) the entity the name or an alias matches (normalised).",
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.EntityUpsertInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        entity, created = graph_services.entity_upsert(agent=agent, actor=request.user, **data.validated_data)
        return Response(
            _entity_detail(entity), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class EntityDetailView(AgentScopedView):
    """One entity with the relations from and to it; DELETE removes it and them."""

    @extend_schema(
        operation_id="agents_kg_entities_retrieve", tags=_KG, responses=s.EntityDetailOutputSerializer
    )
    def get(self, request, id, eid):
        agent = self.agent(id)
        entity = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=eid)
        return Response(_entity_detail(entity))

    @extend_schema(operation_id="agents_kg_entities_destroy", tags=_KG, responses={204: None})
    def delete(self, request, id, eid):
        agent = self.agent(id)
        entity = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=eid)
        graph_services.entity_delete(entity=entity, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class EntityMergeView(AgentScopedView):
    """Merge this entity into another of the same agent."""

    @extend_schema(
        operation_id="agents_kg_entities_merge",
        tags=_KG,
        request=s.EntityMergeInputSerializer,
        responses=s.EntityDetailOutputSerializer,
        summary="Fold this entity into `into`: relations re-pointed, aliases merged, this one deleted.",
    )
    def post(self, request, id, eid):
        agent = self.agent(id)
        entity = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=eid)
        data = s.EntityMergeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        into = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=data.validated_data["into"])
        merged = graph_services.entity_merge(entity=entity, into=into, actor=request.user)
        return Response(_entity_detail(merged))


class RelationCreateView(AgentScopedView):
    """Add (or update) a typed edge between two entities."""

    @extend_schema(
        operation_id="agents_kg_relations_create",
        tags=_KG,
        request=s.RelationCreateInputSerializer,
        responses={201: s.RelationOutputSerializer, 200: s.RelationOutputSerializer},
        summary="Add source -type-> target (201), or update that edge's weight/description (200).",
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.RelationCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        ends = {}
        for end in ("source", "target"):
            if end in values:
                ends[end] = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=values[end])
            else:
                ends[end] = graph_selectors.entity_find_by_name(
                    org=request.org, agent=agent, name=values[f"{end}_name"]
                )
        relation, created = graph_services.relation_upsert(
            agent=agent,
            actor=request.user,
            source=ends["source"],
            target=ends["target"],
            type=values["type"],
            weight=values.get("weight"),
            description=values["description"],
        )
        return Response(
            s.RelationOutputSerializer(relation).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class TraverseView(AgentScopedView):
    """Walk the graph breadth-first from one entity."""

    @extend_schema(
        operation_id="agents_kg_traverse",
        tags=_KG,
        request=s.TraverseInputSerializer,
        responses=s.TraverseOutputSerializer,
        summary="Breadth-first walk from an entity, depth 0-3; every node once, with its hop count.",
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.TraverseInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if "entity_id" in values:
            start = graph_selectors.entity_get(org=request.org, agent=agent, entity_id=values["entity_id"])
        else:
            start = graph_selectors.entity_find_by_name(org=request.org, agent=agent, name=values["name"])
        answer = graph_selectors.graph_traverse(
            start=start,
            depth=values["depth"],
            relation_types=values["relation_types"],
            direction=values["direction"],
        )
        return Response(s.TraverseOutputSerializer(answer).data)


class ExtractView(AgentScopedView):
    """Extract entities and relations from a text with the agent's model."""

    @extend_schema(
        operation_id="agents_kg_extract",
        tags=_KG,
        request=s.ExtractInputSerializer,
        responses={
            200: s.ExtractOutputSerializer,
            502: OpenApiResponse(description="ERR_EXTRACTION_INVALID: the model's output was not valid."),
        },
        summary="Extract entities and relations from text with the agent's model (structured output).",
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.ExtractInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answer = graph_extract(agent=agent, actor=request.user, text=data.validated_data["text"])
        return Response(s.ExtractOutputSerializer(answer).data)


class GraphExportView(AgentScopedView):
    """The agent's whole graph as nodes and edges, for drawing."""

    @extend_schema(operation_id="agents_kg_export", tags=_KG, responses=s.GraphExportOutputSerializer)
    def get(self, request, id):
        agent = self.agent(id)
        return Response(
            s.GraphExportOutputSerializer(graph_selectors.graph_export(org=request.org, agent=agent)).data
        )


class DuplicatesView(AgentScopedView):
    """Pairs of entities that probably name the same thing."""

    @extend_schema(operation_id="agents_kg_duplicates", tags=_KG, responses=s.DuplicateListOutputSerializer)
    def get(self, request, id):
        agent = self.agent(id)
        pairs = graph_selectors.graph_duplicates(org=request.org, agent=agent)
        return Response(s.DuplicateListOutputSerializer({"items": pairs}).data)


# --- episodic ----------------------------------------------------------------------------------


class EpisodicListView(AgentScopedView):
    """Summaries of conversations with the agent."""

    @extend_schema(
        operation_id="agents_episodic_list",
        tags=_EPISODIC,
        parameters=[OpenApiParameter("conversation_id", OpenApiTypes.UUID, required=False), *_PAGE_PARAMS],
        responses=s.EpisodicSummaryPageOutputSerializer,
        summary="Summaries of the caller's conversations with the agent (ADMIN+: everyone's).",
    )
    def get(self, request, id):
        agent = self.agent(id)
        conversation_id = request.query_params.get("conversation_id") or None
        if conversation_id:
            conversation_id = _uuid_param("conversation_id", conversation_id)
        rows = episodic_selectors.episodic_list(
            org=request.org,
            agent=agent,
            user=request.user,
            see_all=Role.rank(request.role) >= Role.rank(Role.ADMIN),
            conversation_id=conversation_id,
        )
        return self.paginate(rows, s.EpisodicSummaryOutputSerializer)


class EpisodicSearchView(AgentScopedView):
    """Search the summaries of conversations with the agent."""

    @extend_schema(
        operation_id="agents_episodic_search",
        tags=_EPISODIC,
        request=s.EpisodicSearchInputSerializer,
        responses=s.EpisodicSearchOutputSerializer,
    )
    def post(self, request, id):
        agent = self.agent(id)
        data = s.EpisodicSearchInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answer = episodic_selectors.episodic_search(
            org=request.org,
            agent=agent,
            user=request.user,
            see_all=Role.rank(request.role) >= Role.rank(Role.ADMIN),
            **data.validated_data,
        )
        return Response(s.EpisodicSearchOutputSerializer(answer).data)


def _uuid_param(name: str, value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ValidationError(f"{name} must be a UUID.", details={name: ["Not a UUID."]}) from exc
