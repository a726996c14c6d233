"""API of `accounts`: orgs."""

urlpatterns: list = []
