"""The WebSocket RPC protocol at ``/ws``: frames, authentication and chat's methods.

The consumer itself is ``chat.consumers.RpcConsumer``; the method registry is ``core.rpc``.
"""
