"""Speech and vision utilities under /api/v1/ai/."""

urlpatterns: list = []
