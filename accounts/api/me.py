"""API of `accounts`: me."""

urlpatterns: list = []
