"""Speech-to-text transcripts of uploaded audio, kept so the uploader can list and delete them."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models


class Transcript(models.Model):
    """The text of one audio upload (the audio itself is not kept)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(settings.TENANT_MODEL, on_delete=models.CASCADE, related_name="transcripts")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    filename = models.CharField(max_length=255, blank=True)
    content_type = models.CharField(max_length=100)
    size_bytes = models.PositiveBigIntegerField(default=0)
    duration_seconds = models.FloatField(null=True, blank=True)
    language = models.CharField(max_length=16, blank=True)
    model = models.CharField(max_length=200, blank=True)
    text = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "user", "-created_at"], name="transcript_org_user")]

    def __str__(self) -> str:
        return self.filename or f"Transcript {self.pk}"
