"""Chat's tables: conversations, their messages, the event log of streaming turns, feedback and
speech transcripts."""

from chat.models.conversations import Conversation, Message, MessageEvent, MessageFeedback
from chat.models.transcripts import Transcript

__all__ = ["Conversation", "Message", "MessageEvent", "MessageFeedback", "Transcript"]
