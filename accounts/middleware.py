"""Middleware of `accounts`: the per-key request log."""

from core.middleware.base import HybridMiddleware


class ApiKeyUsageMiddleware(HybridMiddleware):
    """Records each request made with an API key (filled in by the API-key work)."""

    def handle(self, request):
        return self.get_response(request)

    async def ahandle(self, request):
        return await self.get_response(request)
