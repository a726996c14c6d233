"""Reads of `agents`, one module per area."""
