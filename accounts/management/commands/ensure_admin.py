"""``manage.py ensure_admin``: run by `make run` before the stack starts.

On a platform nobody has set up yet it either creates the first owner from ``ADMIN_EMAIL`` /
``ADMIN_PASSWORD`` (and ``ADMIN_ORG_NAME``), or says how to finish setup. Once set up it is silent.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Create the first owner from ADMIN_EMAIL/ADMIN_PASSWORD, or say how to finish setup."

    def handle(self, *args, **options):
        from accounts.services.setup import platform_bootstrap, platform_is_bootstrapped

        if platform_is_bootstrapped():
            return
        email, password = settings.ADMIN_EMAIL, settings.ADMIN_PASSWORD
        if email and password:
            try:
                user, org = platform_bootstrap(
                    email=email, password=password, org_name=settings.ADMIN_ORG_NAME
                )
            except ApplicationError as exc:
                raise CommandError(
                    f"Could not create the owner from ADMIN_EMAIL: {exc.message} {exc.details}"
                ) from exc
            self.stdout.write(f"Created owner {user.email} of {org.name}.")
            return
        site = settings.SITE_URL.rstrip("/")
        self.stdout.write(
            f"Finish setup: POST {site}/api/v1/auth/setup {{email,password,org_name}}, or run "
            "`python manage.py bootstrap --email … --password … --org …`"
        )
