"""Reads of `chat`: every queryset is scoped to the org (and the calling user) here."""
