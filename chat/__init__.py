"""Conversations, the streaming turn, the OpenAI-compatible API and WebSocket RPC."""
