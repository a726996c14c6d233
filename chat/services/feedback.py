"""Feedback on assistant messages: one thumbs up or down (with an optional comment) per user and
message; sending it again replaces it."""

from __future__ import annotations

from django.db import transaction

from accounts.services.audit import audit_record
from chat.models import Message, MessageFeedback
from core.errors import ValidationError

MAX_COMMENT = 2000


@transaction.atomic
def feedback_upsert(
    *, message: Message, user, rating: str, comment: str = ""
) -> tuple[MessageFeedback, bool]:
    """Record ``user``'s rating of an assistant message; returns ``(feedback, created)``."""
    if message.role != Message.Role.ASSISTANT:
        raise ValidationError(
            "Feedback is for assistant messages.",
            code="ERR_NOT_ASSISTANT_MESSAGE",
            details={"message": ["Not an assistant message."]},
        )
    if rating not in MessageFeedback.Rating.values:
        raise ValidationError("rating must be up or down.", details={"rating": ["up or down."]})
    comment = str(comment or "").strip()
    if len(comment) > MAX_COMMENT:
        raise ValidationError(
            "The comment is too long.", details={"comment": [f"At most {MAX_COMMENT} characters."]}
        )
    feedback = MessageFeedback.objects.select_for_update().filter(message=message, user=user).first()
    created = feedback is None
    before = None if created else {"rating": feedback.rating, "comment": feedback.comment}
    if created:
        feedback = MessageFeedback(org_id=message.org_id, message=message, user=user)
    feedback.rating = rating
    feedback.comment = comment
    feedback.save()
    audit_record(
        org=message.conversation.org,
        actor=user,
        action="message.feedback",
        entity=feedback,
        before=before,
        after={"message": message.pk, "rating": rating, "comment": comment},
    )
    return feedback, created
