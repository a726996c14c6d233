"""API of `accounts`: keys."""

urlpatterns: list = []
