"""``manage.py memory_import_entries``: move old agent memory entries into memory documents
(``knowledge.memory.services.legacy``). Safe to run any number of times; ``make run`` runs it after
migrating."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from knowledge.memory.services.legacy import legacy_memory_import


class Command(BaseCommand):
    help = "Move the agents' old memory entries into memory documents (idempotent)."

    def handle(self, *args, **options):
        outcome = legacy_memory_import()
        if outcome["imported"] or options["verbosity"] > 1:
            self.stdout.write(f"memory entries imported: {outcome['imported']}, failed: {outcome['failed']}")
        if outcome["failed"]:
            raise CommandError(f"{outcome['failed']} memory entries could not be imported (see the log).")
