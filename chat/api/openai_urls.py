"""The OpenAI-compatible surface, mounted at /v1/ (views in ``chat.api.openai_views``), plus the
benchmark relay when ``BENCH_RELAY_UPSTREAM`` is set."""

from django.conf import settings
from django.urls import path

from .openai_views import urlpatterns as openai_urlpatterns

urlpatterns = list(openai_urlpatterns)
if settings.BENCH_RELAY_UPSTREAM:
    from .openai_relay import relay_chat_completions

    urlpatterns.append(path("_bench/relay/chat/completions", relay_chat_completions, name="bench-relay"))
