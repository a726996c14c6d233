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


ACCEPTS = [
    "",
    "*/*",
    "application/json",
    "text/event-stream",
    "application/json; indent=4",
    "text/*",
    "text/html",
]


@pytest.mark.parametrize("query", ["", "format=sse", "format=json", "x=1"])
@pytest.mark.parametrize("accept", ACCEPTS)
def test_content_negotiation_answers_what_drfs_own_answers(accept, query):
    """The short way (no format override, an Accept any renderer or the first one satisfies) picks
    what DRF's negotiation picks; everything else is DRF's, its 406 included."""
    from rest_framework.exceptions import NotAcceptable
    from rest_framework.renderers import JSONRenderer
    from rest_framework.test import APIRequestFactory

    from core.sse import EventStreamRenderer

    class Plain(APIView):
        renderer_classes = [JSONRenderer, EventStreamRenderer]

    class Mixed(OwnThreadMixin, Plain):
        pass

    def negotiate(view_class):
        request = APIRequestFactory().post(f"/x?{query}" if query else "/x", HTTP_ACCEPT=accept)
        if not accept:
            del request.META["HTTP_ACCEPT"]
        view = view_class()
        drf_request = view.initialize_request(request)
        view.format_kwarg = None
        try:
            renderer, media_type = view.perform_content_negotiation(drf_request)
        except NotAcceptable:
            return "406"
        return type(renderer), media_type

    assert negotiate(Mixed) == negotiate(Plain)
