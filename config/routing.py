"""WebSocket routes. The chat app adds the `/ws` RPC consumer when it lands."""

websocket_urlpatterns: list = []
