"""PostgreSQL: ``knowledge_chunk.tsv_length``, the number of tokens the chunk's tsvector holds.

BM25 normalises a chunk's term frequencies by its length against the KB's average; reading the
length from the tsvector at query time would unnest every candidate's whole tsvector, so it is
stored beside ``tsv`` (filled by ``knowledge.search.keyword.index_chunks`` from now on) and
backfilled here for the chunks indexed before. Like ``tsv``, it is not a Django field; SQLite's
FTS5 keeps its own lengths.
"""

from django.db import migrations

# Tokens of a tsvector: one per position of each lexeme (a lexeme stored without positions counts once).
_PG_FORWARD = [
    "ALTER TABLE knowledge_chunk ADD COLUMN tsv_length integer",
    "UPDATE knowledge_chunk SET tsv_length = (SELECT coalesce(sum(coalesce(cardinality(t.positions), 1)), 0) "
    "FROM unnest(tsv) AS t) WHERE tsv IS NOT NULL",
]
_PG_BACKWARD = ["ALTER TABLE knowledge_chunk DROP COLUMN tsv_length"]


def backfill_forward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in _PG_FORWARD:
            schema_editor.execute(sql)


def backfill_backward(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in _PG_BACKWARD:
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("knowledge", "0001_initial")]

    operations = [migrations.RunPython(backfill_forward, backfill_backward, elidable=False)]
