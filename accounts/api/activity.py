"""API of `accounts`: activity."""

urlpatterns: list = []
