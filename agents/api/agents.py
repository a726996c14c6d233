"""API of `agents`: agents."""

urlpatterns: list = []
