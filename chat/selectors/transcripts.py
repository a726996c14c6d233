"""Reads of speech transcripts: always the caller's own (org and user), never another's."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from accounts.models import Organization, User
from chat.models import Transcript
from core.errors import NotFoundError


def transcript_list(*, org: Organization, user: User) -> QuerySet[Transcript]:
    """The user's transcripts in the org, newest first."""
    return Transcript.objects.filter(org=org, user=user).order_by("-created_at", "-pk")


def transcript_get(*, org: Organization, user: User, transcript_id: Any) -> Transcript:
    """One of the user's transcripts; another user's or another org's answers 404."""
    transcript = transcript_list(org=org, user=user).filter(pk=transcript_id).first()
    if transcript is None:
        raise NotFoundError("Transcript not found.")
    return transcript
