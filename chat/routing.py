"""WebSocket routes of `chat`: the RPC socket at ``/ws`` (API.md "WebSocket RPC frames")."""

from django.urls import path

from chat.consumers import RpcConsumer

websocket_urlpatterns = [
    path("ws", RpcConsumer.as_asgi(), name="ws-rpc"),
]
