"""Chat API routes: conversations, messages, the streaming turn, feedback."""

urlpatterns: list = []
