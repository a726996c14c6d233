"""Celery tasks of `accounts`: thin interfaces that take ids and call services."""
