"""API of `agents`: providers."""

urlpatterns: list = []
