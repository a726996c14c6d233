"""App config of `accounts`."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """Identity and tenancy."""

    name = "accounts"
    verbose_name = "Accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import jobs, receivers, schema  # noqa: F401 - handlers, receivers, OpenAPI
