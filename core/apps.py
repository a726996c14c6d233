"""App config of `core`."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    """Shared conventions: error envelope, pagination, limits, jobs, health, metrics."""

    name = "core"
    verbose_name = "Platform core"
    default_auto_field = "django.db.models.BigAutoField"
