"""Routes of `knowledge` under /api/v1/ (agent memory mounts its own, ``knowledge.memory.api.urls``)."""

from .views import urlpatterns

__all__ = ["urlpatterns"]
