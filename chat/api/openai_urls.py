"""The OpenAI-compatible surface, mounted at /v1/."""

urlpatterns: list = []
