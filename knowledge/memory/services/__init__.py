"""Writes of `knowledge.memory`: memory documents, the knowledge graph, extraction, episodic summaries."""
