"""Billing and usage API routes (mounted under /api/v1/)."""

from . import credits, plans, usage

urlpatterns = [*usage.urlpatterns, *credits.urlpatterns, *plans.urlpatterns]
