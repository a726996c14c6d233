"""WebSocket routes of every app, mounted by ``config.asgi``."""

from chat.routing import websocket_urlpatterns as chat_websocket_urlpatterns

websocket_urlpatterns: list = [*chat_websocket_urlpatterns]
