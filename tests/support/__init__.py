"""Helpers that tests share across apps: real servers on loopback and their clients."""
