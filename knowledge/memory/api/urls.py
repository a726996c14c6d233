"""Routes of agent memory, the knowledge graph and episodic summaries under /api/v1/."""

from django.urls import path

from . import views

urlpatterns = [
    path(
        "agents/<uuid:id>/memory/documents",
        views.MemoryDocumentListView.as_view(),
        name="agent-memory-documents",
    ),
    path(
        "agents/<uuid:id>/memory/documents/<path:path>",
        views.MemoryDocumentDetailView.as_view(),
        name="agent-memory-document",
    ),
    path("agents/<uuid:id>/memory/search", views.MemorySearchView.as_view(), name="agent-memory-search"),
    path("agents/<uuid:id>/kg/entities", views.EntityListView.as_view(), name="agent-kg-entities"),
    path("agents/<uuid:id>/kg/entities/<uuid:eid>", views.EntityDetailView.as_view(), name="agent-kg-entity"),
    path(
        "agents/<uuid:id>/kg/entities/<uuid:eid>/merge",
        views.EntityMergeView.as_view(),
        name="agent-kg-entity-merge",
    ),
    path("agents/<uuid:id>/kg/relations", views.RelationCreateView.as_view(), name="agent-kg-relations"),
    path("agents/<uuid:id>/kg/traverse", views.TraverseView.as_view(), name="agent-kg-traverse"),
    path("agents/<uuid:id>/kg/extract", views.ExtractView.as_view(), name="agent-kg-extract"),
    path("agents/<uuid:id>/kg/export", views.GraphExportView.as_view(), name="agent-kg-export"),
    path("agents/<uuid:id>/kg/duplicates", views.DuplicatesView.as_view(), name="agent-kg-duplicates"),
    path("agents/<uuid:id>/episodic", views.EpisodicListView.as_view(), name="agent-episodic"),
    path(
        "agents/<uuid:id>/episodic/search", views.EpisodicSearchView.as_view(), name="agent-episodic-search"
    ),
]
