"""Request middleware of the platform, outermost first in settings.MIDDLEWARE."""

from .body_limit import BodySizeLimitMiddleware, max_body_size
from .idempotency import IdempotencyMiddleware
from .request_context import RequestContextMiddleware

__all__ = [
    "BodySizeLimitMiddleware",
    "IdempotencyMiddleware",
    "RequestContextMiddleware",
    "max_body_size",
]
