"""Writes of `chat`: conversations, messages, feedback and the streaming turn."""
