#!/usr/bin/env bash
# `make test`: every quality gate, the suite on PostgreSQL + Redis, then a smoke run of the
# embedded default. Stops at the first failing gate.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
started=$(date +%s)
step() { printf '\n==> %s\n' "$*"; }

step "services (PostgreSQL, Redis)"
exports=$($BIN/python scripts/test_services.py)
eval "$exports"
echo "database: ${DATABASE_URL:-SQLite}  redis: ${REDIS_URL:-none (local memory)}"

step "ruff check";            $BIN/ruff check .
step "ruff format --check";   $BIN/ruff format --check .
step "import contracts";      $BIN/lint-imports --no-cache

export DJANGO_SETTINGS_MODULE=config.settings.test
step "manage.py check";       $BIN/python manage.py check --fail-level WARNING
step "makemigrations --check"; $BIN/python manage.py makemigrations --check --dry-run
step "OpenAPI schema (no warnings)"
schema=$(mktemp)
$BIN/python manage.py spectacular --validate --fail-on-warn --file "$schema"
rm -f "$schema"

step "pytest (${PYTEST_WORKERS:=2} workers)"
# Each xdist worker has its own test database and Celery queue (config/settings/test.py).
$BIN/python -m pytest -n "$PYTEST_WORKERS" "$@"

step "knowledge suite on SQLite (the embedded default's full-text search is FTS5, not PostgreSQL's)"
# The same tests again on SQLite, which the embedded default runs on: parsing, the ingestion state
# machine, ranking and tenant isolation must hold on both databases.
env -u DATABASE_URL $BIN/python -m pytest -n "$PYTEST_WORKERS" -p no:cacheprovider tests/knowledge

step "embedded default smoke (SQLite, in-memory layer, filesystem broker)"
unset DJANGO_SETTINGS_MODULE
$BIN/python scripts/smoke_embedded.py

printf '\nmake test: all gates passed in %ss\n' "$(( $(date +%s) - started ))"
