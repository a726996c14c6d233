"""Signal receivers of `agents`: reactions to changes in `accounts`, which cannot import agents,
and the invalidation of the cached agent rows (``agents.lookup_cache``).

When someone leaves an org (or is removed), the agents of that org stop being shared with them:
a share is a grant to a member, and a later re-join must not silently restore it.
"""

from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.models import Membership
from agents import lookup_cache
from agents.models import Agent, AgentShare


@receiver([post_save, post_delete], sender=Agent, dispatch_uid="agents.lookup_cache")
def forget_cached_agents(sender, **kwargs) -> None:
    """An agent changed: no call may use a cached copy of any agent row any more."""
    lookup_cache.invalidate()


@receiver(post_delete, sender=Membership, dispatch_uid="agents.drop_shares_of_former_member")
def drop_shares_of_former_member(sender, instance: Membership, **kwargs) -> None:
    """Delete the departed member's shares of the org's agents (the removal itself is audited)."""
    AgentShare.objects.filter(agent__org_id=instance.org_id, user_id=instance.user_id).delete()
