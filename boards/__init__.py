"""Mission control: boards, tasks, approvals and the agent-facing board API."""
