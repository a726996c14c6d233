"""Signal receivers of `agents`: reactions to changes in `accounts`, which cannot import agents.

When someone leaves an org (or is removed), the agents of that org stop being shared with them:
a share is a grant to a member, and a later re-join must not silently restore it.
"""

from __future__ import annotations

from django.db.models.signals import post_delete
from django.dispatch import receiver

from accounts.models import Membership
from agents.models import AgentShare


@receiver(post_delete, sender=Membership, dispatch_uid="agents.drop_shares_of_former_member")
def drop_shares_of_former_member(sender, instance: Membership, **kwargs) -> None:
    """Delete the departed member's shares of the org's agents (the removal itself is audited)."""
    AgentShare.objects.filter(agent__org_id=instance.org_id, user_id=instance.user_id).delete()
