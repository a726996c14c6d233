"""API of `agents`: tools."""

urlpatterns: list = []
