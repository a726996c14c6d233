"""``manage.py run_cron <job>``: run one registered cron job now and print its report as JSON."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from core.crons import cron_names, run_cron
from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Run a registered cron job (usage-rollup, reconcile-budgets, …); --list shows them."

    def add_arguments(self, parser):
        parser.add_argument("job", nargs="?", help="The job's name.")
        parser.add_argument("--list", action="store_true", help="List the registered jobs.")

    def handle(self, *args, job=None, list=False, **options):  # noqa: A002 - the flag's name
        if list or not job:
            for name in cron_names():
                self.stdout.write(name)
            return
        try:
            report = run_cron(job)
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} Known jobs: {', '.join(cron_names())}") from exc
        self.stdout.write(json.dumps(report, default=str))
