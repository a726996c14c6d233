"""An OpenAI-compatible upstream on loopback: the test peer for everything that calls an LLM.

Replies deterministically: the assistant text is "echo: <last user message>", streamed word by word.
Serves /v1/models, /v1/chat/completions (plain and SSE), /v1/embeddings (hash vectors).
Run: python fake_upstream.py PORT  (FAKE_UPSTREAM_LOG=file logs each request)
"""

import hashlib
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model-1"


def _reply_for(messages):
    last = ""
    for m in messages:
        if m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            last = c or ""
    return "echo: " + last


def _embed(text, dim=64):
    v = [0.0] * dim
    for tok in text.lower().split():
        h = int(hashlib.sha256(tok.encode()).hexdigest(), 16)
        v[h % dim] += 1.0 if (h >> 8) % 2 else -1.0
    n = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / n for x in v]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def parse_request(self):
        ok = super().parse_request()
        log = os.environ.get("FAKE_UPSTREAM_LOG")
        if ok and log:  # one line per request: the address it reached, then the path
            with open(log, "a") as f:
                f.write(f"{self.server.server_address[0]} {self.command} {self.path}\n")
        return ok

    def _json(self, code, obj):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def _redirect(self):
        """/redir/<rest> answers 307 to the decoy address: a guard must re-check where it is sent."""
        if not self.path.startswith("/redir/"):
            return False
        self.send_response(307)
        self.send_header("Location", f"http://127.0.0.2:{self.server.server_address[1]}/" + self.path[7:])
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def do_GET(self):
        if self._redirect():
            return
        if self.path.rstrip("/").endswith("/v1/models"):
            return self._json(
                200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]}
            )
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        if self._redirect():
            return
        body = json.loads(raw or b"{}")
        if self.path.endswith("/chat/completions"):
            text = _reply_for(body.get("messages", []))
            usage = {
                "prompt_tokens": 10,
                "completion_tokens": len(text.split()),
                "total_tokens": 10 + len(text.split()),
            }
            if not body.get("stream"):
                return self._json(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", MODEL),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    },
                )
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            words = text.split(" ")
            for i, w in enumerate(words):
                chunk = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", MODEL),
                    "choices": [
                        {
                            "index": 0,
                            "delta": (
                                {"role": "assistant", "content": w} if i == 0 else {"content": " " + w}
                            ),
                            "finish_reason": None,
                        }
                    ],
                }
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()
                time.sleep(float(self.headers.get("X-Fake-Delay", "0.01")))
            fin = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", MODEL),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
            self.wfile.write(b"data: " + json.dumps(fin).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                u = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": body.get("model", MODEL),
                    "choices": [],
                    "usage": usage,
                }
                self.wfile.write(b"data: " + json.dumps(u).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path.endswith("/embeddings"):
            inp = body.get("input")
            inputs = inp if isinstance(inp, list) else [inp]
            data = [
                {"object": "embedding", "index": i, "embedding": _embed(str(t))} for i, t in enumerate(inputs)
            ]
            return self._json(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body.get("model", "fake-embed"),
                    "usage": {"prompt_tokens": 5 * len(inputs), "total_tokens": 5 * len(inputs)},
                },
            )
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # benches open hundreds of streams at once


class FakeUpstream:
    """Run the fake in a background thread: ``with FakeUpstream() as up: up.base_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = Server((host, port), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> "FakeUpstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 18999
    # 127.0.0.2 is the same fake on a loopback address that no allowlist names: a platform that
    # reaches it has let a request through to a private address (SSRF).
    decoy = Server(("127.0.0.2", port), H)
    threading.Thread(target=decoy.serve_forever, daemon=True).start()
    Server(("127.0.0.1", port), H).serve_forever()
