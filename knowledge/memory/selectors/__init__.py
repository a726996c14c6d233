"""Reads of `knowledge.memory`; every function takes ``org`` and the (visible) agent."""
