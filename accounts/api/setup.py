"""API of `accounts`: setup."""

urlpatterns: list = []
