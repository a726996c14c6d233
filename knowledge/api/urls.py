"""Knowledge API routes."""

urlpatterns: list = []
