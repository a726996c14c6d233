"""Reads of `billing`; every function takes ``org=`` (or an org id)."""
