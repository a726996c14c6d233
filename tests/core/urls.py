"""The real URL conf plus the convention-exercising views of ``views_for_tests``."""

from config.urls import handler400, handler403, handler404, handler500
from config.urls import urlpatterns as real
from tests.core.views_for_tests import urlpatterns as extra

urlpatterns = extra + real

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
