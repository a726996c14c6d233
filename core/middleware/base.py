"""A base for middleware that runs natively in both sync (tests, WSGI) and async (Daphne) stacks,
so no request pays a thread hop for it."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction


class HybridMiddleware:
    """Subclasses implement ``handle(request)`` and ``ahandle(request)``."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.ahandle(request)
        return self.handle(request)

    def handle(self, request):  # pragma: no cover - overridden
        return self.get_response(request)

    async def ahandle(self, request):  # pragma: no cover - overridden
        return await self.get_response(request)
