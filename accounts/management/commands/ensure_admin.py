"""``manage.py ensure_admin``: run by `make run` before the stack starts (filled in by setup work)."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the first owner from ADMIN_EMAIL/ADMIN_PASSWORD, or say how to finish setup."

    def handle(self, *args, **options):
        return None
