"""Writes of `agents`, one module per area."""
