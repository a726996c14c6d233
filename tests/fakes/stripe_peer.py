"""A loopback stand-in for Stripe's API, enough for Checkout Sessions and off-session charges of a
saved card: records each request (form-encoded body or query) and answers the objects the SDK
expects. Point the SDK at it with ``STRIPE_API_BASE``. ``server.fail`` declines everything;
``server.cards`` lists the saved cards of any customer; ``server.intent_status`` is what a new
payment intent says."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        path, _, query = self.path.partition("?")
        self._record(path, dict(parse_qsl(query, keep_blank_values=True)))
        if path != "/v1/payment_methods":
            self._send(404, {"error": {"type": "invalid_request_error", "message": "Unknown path"}})
            return
        cards = [{"id": card, "object": "payment_method", "type": "card"} for card in self.server.cards]
        self._send(200, {"object": "list", "data": cards, "has_more": False, "url": path})

    def _record(self, path, form):
        self.server.requests.append(
            {
                "path": path,
                "form": form,
                "auth": self.headers.get("Authorization", ""),
                "idempotency_key": self.headers.get("Idempotency-Key", ""),
            }
        )

    def do_POST(self):  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        self._record(self.path, form)
        if self.path not in ("/v1/checkout/sessions", "/v1/payment_intents"):
            self._send(404, {"error": {"type": "invalid_request_error", "message": "Unknown path"}})
            return
        if self.server.fail:
            self._send(402, {"error": {"type": "card_error", "message": "Declined", "code": "card_declined"}})
            return
        number = len(self.server.requests)
        if self.path == "/v1/payment_intents":
            metadata = {k[len("metadata[") : -1]: v for k, v in form.items() if k.startswith("metadata[")}
            self._send(
                200,
                {
                    "id": f"pi_test_{number}",
                    "object": "payment_intent",
                    "amount": int(form.get("amount") or 0),
                    "currency": form.get("currency"),
                    "customer": form.get("customer"),
                    "status": self.server.intent_status,
                    "metadata": metadata,
                },
            )
            return
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
        self.server.cards = ["pm_card_visa"]
        self.server.intent_status = "succeeded"
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
