"""``manage.py bootstrap``: scripted installs create (or reuse) the first owner and org.

With ``--api-key`` the command prints exactly one line on stdout, a new ``service`` key with the
OWNER role, so that ``KEY=$(python manage.py bootstrap … --api-key)`` just works; anything else
(logs, warnings) goes to stderr.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApiKey, Role
from core.errors import ApplicationError


def _describe(exc: ApplicationError) -> str:
    fields = exc.details.get("fields") if isinstance(exc.details, dict) else None
    if not fields:
        return exc.message
    problems = "; ".join(f"{field}: {' '.join(map(str, msgs))}" for field, msgs in fields.items())
    return f"{exc.message} ({problems})"


class Command(BaseCommand):
    help = "Create or reuse the platform owner and their org; --api-key prints a new OWNER service key."

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True, help="The owner's email address.")
        parser.add_argument("--password", required=True, help="The owner's password (set every run).")
        parser.add_argument("--org", required=True, help="The org's name; reused if the owner has one.")
        parser.add_argument(
            "--api-key",
            action="store_true",
            help="Print one line: a new service key with the OWNER role in that org.",
        )

    def handle(self, *args, **options):
        from accounts.services.keys import api_key_create
        from accounts.services.setup import platform_bootstrap

        try:
            with transaction.atomic():
                user, org = platform_bootstrap(
                    email=options["email"], password=options["password"], org_name=options["org"]
                )
                raw_key = None
                if options["api_key"]:
                    _key, raw_key = api_key_create(
                        org=org,
                        actor=user,
                        name=f"bootstrap {timezone.now():%Y-%m-%d %H:%M:%S}",
                        kind=ApiKey.Kind.SERVICE,
                        role=Role.OWNER,
                    )
        except ApplicationError as exc:
            raise CommandError(_describe(exc)) from exc
        if raw_key is not None:
            self.stdout.write(raw_key)
        else:
            self.stdout.write(f"Owner {user.email} of {org.name} ({org.pk}) is ready.")
