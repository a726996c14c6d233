"""ASGI entry point: one port serves HTTP (pages, API, SSE) and WebSocket."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

import django  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from core.middleware.inline import InlineASGIHandler  # noqa: E402  (after setup)

# Django's ASGI handler, with Django's own middleware run on the loop (core.middleware.inline).
django_asgi_app = InlineASGIHandler()

from config.routing import websocket_urlpatterns  # noqa: E402  (needs the app registry)


class BrowserOriginValidator(OriginValidator):
    """Refuse a WebSocket whose ``Origin`` is not one of ``ALLOWED_HOSTS`` (cross-site hijacking
    of a browser session), but let clients that send no ``Origin`` at all through: browsers always
    send one, so those are scripts, which authenticate with a key or a cookie they hold themselves."""

    def valid_origin(self, parsed_origin):
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Session cookie → scope["user"]; the /ws consumer also accepts an API key in `connect`.
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), settings.ALLOWED_HOSTS
        ),
    }
)
