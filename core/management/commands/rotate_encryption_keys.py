"""``manage.py rotate_encryption_keys``: re-encrypt every stored secret under the newest key.

Key rotation: put a new key first in ``SECRET_ENCRYPTION_KEYS`` (keep the old ones after it), run
this command, then drop the old keys. It finds every ``core.crypto.EncryptedTextField`` of every
installed model by introspection (core imports no app), reads the raw column (the Fernet token,
bypassing decryption), and writes back the token re-encrypted under the newest key.

Work goes in batches, each in its own transaction, walking the primary key so memory stays flat.
An UPDATE only lands if the column still holds the token that was read, so a value changed
concurrently is left alone (it was written under the newest key anyway). Values already under the
newest key are skipped, so the command can be re-run safely.
"""

from __future__ import annotations

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction

from core.crypto import DecryptionError, EncryptedTextField, needs_rotation, rotate


def encrypted_columns() -> list[tuple[str, str, str, str]]:
    """(label, table, primary key column, column) of every encrypted field of a concrete model."""
    found: list[tuple[str, str, str, str]] = []
    seen: set[tuple[str, str]] = set()
    for model in apps.get_models():
        meta = model._meta
        if meta.proxy or not meta.managed or meta.swapped:
            continue
        for field in meta.local_concrete_fields:
            if not isinstance(field, EncryptedTextField):
                continue
            key = (meta.db_table, field.column)
            if key in seen:
                continue
            seen.add(key)
            found.append((f"{meta.label}.{field.name}", meta.db_table, meta.pk.column, field.column))
    return found


class Command(BaseCommand):
    help = "Re-encrypt every encrypted column under the newest key of SECRET_ENCRYPTION_KEYS."

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=500, help="Rows per transaction.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would change without writing.")

    def handle(self, *args, batch_size: int, dry_run: bool, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        totals = {"rotated": 0, "current": 0, "failed": 0}
        for label, table, pk_column, column in encrypted_columns():
            counts = self._rotate_column(table, pk_column, column, batch_size=batch_size, dry_run=dry_run)
            for name, value in counts.items():
                totals[name] += value
            self.stdout.write(
                f"{label}: {counts['rotated']} re-encrypted, {counts['current']} already current, "
                f"{counts['failed']} undecryptable"
            )
        verb = "would be re-encrypted" if dry_run else "re-encrypted"
        self.stdout.write(
            f"total: {totals['rotated']} {verb}, {totals['current']} already current, "
            f"{totals['failed']} undecryptable"
        )
        if totals["failed"]:
            raise CommandError(
                f"{totals['failed']} value(s) could not be decrypted with any configured key; "
                "keep the key they were made with in SECRET_ENCRYPTION_KEYS and run again."
            )

    def _rotate_column(self, table: str, pk_column: str, column: str, *, batch_size: int, dry_run: bool):
        quote = connection.ops.quote_name
        select = (
            f"SELECT {quote(pk_column)}, {quote(column)} FROM {quote(table)} "  # noqa: S608 - quoted identifiers
            f"WHERE {quote(column)} IS NOT NULL AND {quote(column)} <> '' "
            "{after} "
            f"ORDER BY {quote(pk_column)} LIMIT %s"
        )
        update = (
            f"UPDATE {quote(table)} SET {quote(column)} = %s "  # noqa: S608 - quoted identifiers
            f"WHERE {quote(pk_column)} = %s AND {quote(column)} = %s"
        )
        counts = {"rotated": 0, "current": 0, "failed": 0}
        last_pk = None
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                if last_pk is None:
                    cursor.execute(select.format(after=""), [batch_size])
                else:
                    cursor.execute(select.format(after=f"AND {quote(pk_column)} > %s"), [last_pk, batch_size])
                rows = cursor.fetchall()
                for pk, token in rows:
                    if not needs_rotation(token):
                        counts["current"] += 1
                        continue
                    try:
                        fresh = rotate(token)
                    except DecryptionError:
                        counts["failed"] += 1
                        self.stderr.write(
                            f"{table}.{column} {pk}: cannot be decrypted with any configured key"
                        )
                        continue
                    if not dry_run:
                        cursor.execute(update, [fresh, pk, token])
                        if cursor.rowcount == 0:  # changed meanwhile, so written under the newest key
                            counts["current"] += 1
                            continue
                    counts["rotated"] += 1
            if len(rows) < batch_size:
                return counts
            last_pk = rows[-1][0]
