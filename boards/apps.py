"""App config of `boards`."""

from django.apps import AppConfig


class BoardsConfig(AppConfig):
    """Mission control: boards, tasks, approvals and the agent-facing board API."""

    name = "boards"
    default_auto_field = "django.db.models.BigAutoField"
