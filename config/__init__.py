"""Project wiring: settings, urls, ASGI/WSGI and the Celery app. No business logic lives here."""

from .celery_app import app as celery_app

__all__ = ["celery_app"]
