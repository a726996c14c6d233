"""Old memory entries of the agents app move into memory documents, once, where the memory
search finds them."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from agents.models import AgentMemoryEntry
from knowledge.memory.models import MemoryDocument
from knowledge.memory.selectors.memory import memory_search
from knowledge.memory.services.legacy import legacy_entry_path


def test_entries_become_documents_once_and_are_searchable(org, agent, member):
    shared = AgentMemoryEntry.objects.create(
        org=org, agent=agent, content="The office plant is called Gerald.", tags=["Office", "plants"]
    )
    own = AgentMemoryEntry.objects.create(
        org=org, agent=agent, user=member, content="Prefers answers in French.", tags=[]
    )
    call_command("memory_import_entries", verbosity=0)

    assert not AgentMemoryEntry.objects.exists()
    shared_doc = MemoryDocument.objects.get(agent=agent, user=None)
    assert shared_doc.path == legacy_entry_path(shared)
    assert shared_doc.content == "Tags: office, plants\n\nThe office plant is called Gerald."
    own_doc = MemoryDocument.objects.get(agent=agent, user=member)
    assert own_doc.path == legacy_entry_path(own) and own_doc.content == "Prefers answers in French."

    hits = memory_search(
        org=org, agent=agent, user=member, query="plant Gerald", top_k=5, mode="keyword", scope="all"
    )
    assert any("Gerald" in hit["text"] for hit in hits["items"])

    call_command("memory_import_entries", verbosity=0)  # nothing left: no change
    assert MemoryDocument.objects.filter(agent=agent).count() == 2


def test_an_entry_that_cannot_be_imported_stays_and_the_command_fails(org, agent, monkeypatch):
    from django.core.management.base import CommandError

    from knowledge.memory.services import legacy

    AgentMemoryEntry.objects.create(org=org, agent=agent, content="kept")

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(legacy, "memory_document_put", broken)
    with pytest.raises(CommandError):
        call_command("memory_import_entries", verbosity=0)
    assert AgentMemoryEntry.objects.filter(content="kept").exists()
    assert not MemoryDocument.objects.filter(agent=agent).exists()
