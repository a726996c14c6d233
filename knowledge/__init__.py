"""Knowledge bases, ingestion, embeddings, retrieval and agent memory."""
