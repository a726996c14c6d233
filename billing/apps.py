"""App config of `billing`."""

from django.apps import AppConfig


class BillingConfig(AppConfig):
    """Usage metering, pricing, spend caps, credits and plans."""

    name = "billing"
    default_auto_field = "django.db.models.BigAutoField"
