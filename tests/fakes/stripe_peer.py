"""A loopback stand-in for Stripe's API, enough for Checkout Sessions: records each form-encoded
request and answers a session object. Point the SDK at it with ``STRIPE_API_BASE``."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        self.server.requests.append(
            {"path": self.path, "form": form, "auth": self.headers.get("Authorization", "")}
        )
        if self.path != "/v1/checkout/sessions":
            self._send(404, {"error": {"type": "invalid_request_error", "message": "Unknown path"}})
            return
        if self.server.fail:
            self._send(402, {"error": {"type": "card_error", "message": "Declined", "code": "card_declined"}})
            return
        number = len(self.server.requests)
        self._send(
            200,
            {
                "id": f"cs_test_{number}",
                "object": "checkout.session",
                "url": f"https://checkout.stripe.test/pay/cs_test_{number}",
                "mode": form.get("mode"),
            },
        )

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_fake")
        self.end_headers()
        self.wfile.write(data)


class FakeStripe:
    """``with FakeStripe() as peer: settings.STRIPE_API_BASE = peer.base_url``."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.requests = []
        self.server.fail = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def requests(self) -> list[dict]:
        return self.server.requests

    def __enter__(self) -> FakeStripe:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
