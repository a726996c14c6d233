"""``chat.api.own_thread``: how a view declares what it serves on the loop."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.views import APIView

from chat.api.own_thread import OwnThreadMixin


def test_a_loop_handler_without_its_body_serializer_fails_when_the_urls_load():
    """The body is validated before the handler runs (while the key is checked), so a view that
    forgets to name its serializer is refused at ``as_view``, not on its first request."""

    class Forgetful(OwnThreadMixin, APIView):
        async def loop_post(self, request, data):
            return None

    with pytest.raises(ImproperlyConfigured, match="loop_serializer_class"):
        Forgetful.as_view()


def test_a_view_without_a_loop_handler_needs_no_serializer():
    class ThreadOnly(OwnThreadMixin, APIView):
        def get(self, request):
            return None

    assert callable(ThreadOnly.as_view())
