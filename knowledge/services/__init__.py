"""Writes of `knowledge`: knowledge bases, documents, ingestion and index versions."""
