"""Invalidate cached API-key lookups whenever a row they depend on changes."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from accounts.auth_cache import invalidate
from accounts.models import ApiKey, Membership, Organization, User


@receiver([post_save, post_delete], sender=ApiKey, dispatch_uid="auth-cache-apikey")
@receiver([post_save, post_delete], sender=Membership, dispatch_uid="auth-cache-membership")
@receiver([post_save, post_delete], sender=Organization, dispatch_uid="auth-cache-org")
@receiver([post_save, post_delete], sender=User, dispatch_uid="auth-cache-user")
def invalidate_key_lookups(sender, **kwargs) -> None:
    invalidate()
