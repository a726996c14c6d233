"""Where episodic summaries get their conversations from, without `knowledge` importing `chat`.

`chat` (through the lead's wiring in ``config``/``chat.apps``) registers a function
``fn(*, idle_since, since=None, limit=None, is_current=None)`` that yields the conversations whose
last message is at or before ``idle_since`` (and after ``since`` when given), skipping those for
which ``is_current(conversation_id, last_message_at)`` is true (already summarised), each as::

    {"conversation_id", "org_id", "agent_id", "user_id", "last_message_at",
     "messages": [{"role", "content", "index"}, ...]}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

ConversationSource = Callable[..., Iterable[dict[str, Any]]]

_sources: list[ConversationSource] = []


def register_conversation_source(fn: ConversationSource) -> ConversationSource:
    """Add a source of idle conversations (idempotent); usable as a decorator."""
    if fn not in _sources:
        _sources.append(fn)
    return fn


def unregister_conversation_source(fn: ConversationSource) -> None:
    """Remove a source (tests that register their own clean up with this)."""
    if fn in _sources:
        _sources.remove(fn)


def conversation_sources() -> list[ConversationSource]:
    return list(_sources)
