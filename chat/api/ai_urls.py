"""Speech and vision utilities under /api/v1/ai/ (see ``chat.api.ai_views``)."""

from django.urls import path

from .ai_views import ExecuteView, ExtractView, SpeechView, TranscribeView, TranscriptViewSet

urlpatterns = [
    path("transcribe", TranscribeView.as_view(), name="ai-transcribe"),
    path("transcripts", TranscriptViewSet.as_view({"get": "list"}), name="ai-transcripts"),
    path(
        "transcripts/<uuid:id>",
        TranscriptViewSet.as_view({"get": "retrieve", "delete": "destroy"}),
        name="ai-transcript-detail",
    ),
    path("tts", SpeechView.as_view(), name="ai-tts"),
    path("extract", ExtractView.as_view(), name="ai-extract"),
    path("execute", ExecuteView.as_view(), name="ai-execute"),
]
