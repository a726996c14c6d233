"""Writes of `accounts`: one module per area, re-exported here."""
