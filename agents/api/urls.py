"""Routes of `agents` under /api/v1/."""

from . import agents, providers, tools

urlpatterns = [*providers.urlpatterns, *agents.urlpatterns, *tools.urlpatterns]
