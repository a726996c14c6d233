"""The offline ``local`` embedding backend (optional extra, requirements-local.txt).

Skipped with a clear reason where the extra is not installed: `make test` prints the reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from knowledge.embeddings import embed_texts, local_available

pytestmark = pytest.mark.skipif(
    not local_available(),
    reason="local embedding backend not installed (pip install -r requirements-local.txt)",
)


def test_local_model_embeds_offline_with_normalised_384d_vectors(org, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vectors = embed_texts(
        org=org,
        texts=["Otters hold hands while sleeping.", "Sea otters sleep holding hands.", "Lava erupts."],
        backend="local",
        model="all-minilm-l6-v2",
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_a_local_kb_ingests_and_searches_by_meaning(org, owner):
    from knowledge.search import run_search
    from knowledge.services.bases import kb_create
    from knowledge.services.documents import document_create_from_text

    from .conftest import run_pending_jobs

    kb = kb_create(org=org, actor=owner, name="Local", embedding_backend="local")
    assert kb.embedding_model == "all-minilm-l6-v2"
    document_create_from_text(
        kb=kb, actor=owner, title="Otters", text="Sea otters hold hands in their sleep."
    )
    document_create_from_text(kb=kb, actor=owner, title="Bread", text="Sourdough is leavened by wild yeast.")
    run_pending_jobs()
    result = run_search(kb=kb, query="marine mammals resting together", mode="vector")
    assert result.hits[0].title == "Otters" and result.mode_used == "vector"
