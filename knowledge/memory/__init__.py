"""Agent memory, the per-agent knowledge graph and episodic summaries (a sub-app of `knowledge`)."""
