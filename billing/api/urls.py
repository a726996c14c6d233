"""Billing and usage API routes."""

urlpatterns: list = []
