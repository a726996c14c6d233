"""An OpenAI-compatible upstream on loopback: the test peer for everything that calls an LLM.

Replies deterministically: the assistant text is "echo: <last user message>", streamed word by word.
Serves /v1/models, /v1/chat/completions (plain and SSE), /v1/embeddings (hash vectors).
Run: python fake_upstream.py PORT  (FAKE_UPSTREAM_LOG=file logs each request)

Failure modes are chosen per request by the MODEL NAME, so tests share no state (a provider's
``X-Fake-Mode`` header, e.g. from its extra headers, overrides the model name: one provider of a
failover chain can fail while the others answer the same model):

- ``fail-<status>`` (401, 403, 400, 404, 429, 500, 502, 503): always answers that status with an
  OpenAI error body; 429 and 503 carry ``Retry-After: 1`` (header ``X-Fake-Retry-After`` overrides).
- ``fail-<status>-once`` / ``fail-<status>-x<N>``: fails the first 1 / N requests, then answers
  normally. Counted per "fail key": the ``X-Fake-Key`` header, else the Authorization header (so a
  test that gives its provider a unique API key needs nothing else).
- ``hang``: sleeps ``X-Fake-Hang`` seconds (default 30) before answering, longer than any client
  read timeout in the tests; it stops early when the client goes away.
- ``hang-midway``: streams two deltas, then hangs.
- ``drop-midway``: streams two deltas with chunked encoding, then closes the socket without ending
  the body (the client sees an incomplete chunked read).
- ``error-midway``: streams two deltas, then an event ``data: {"error": {...}}`` and ends.
- ``slow``: streams with ``X-Fake-Delay`` (default 0.05 s) between deltas.
- ``tools-<N>`` (or ``tools-<N>-p<M>`` for M parallel calls per step): while fewer than N*M tool
  results are in the conversation, asks for the first tool of the request's ``tools`` with
  ``{"step": k}``; then answers "done after <results> tools".

- ``json`` / ``json-<anything>``: the answer is JSON text (see ``_json_reply_for``): the text after
  ``FAKE-JSON:`` in the last message that has one (verbatim, so a test can script invalid output),
  else an object built from the request's ``response_format`` JSON schema, else ``{"echo": …}``.

Audio: ``/v1/audio/transcriptions`` (multipart) answers the text after ``SAY:`` in the audio bytes
(else ``audio of <n> bytes <sha256[:12]>``) with token usage (duration usage for ``whisper*``
models); ``/v1/audio/speech`` answers a few bytes of audio that start with the magic bytes of the
requested ``response_format`` and the matching Content-Type. Both honour the ``fail-*`` modes.

An API key beginning with ``fail-401`` / ``fail-403`` answers that status on every endpoint
(for key probes against ``/v1/models``).

A stream ends by closing its connection, unless the request carries ``X-Fake-Keep-Alive: 1``: then
it is sent with chunked encoding and the connection stays open for the next request, as real
providers do.

``FakeUpstream().stats`` counts requests, finished streams and aborted streams (the client went
away mid-answer), overall and per fail key (``requests_by_key``, ``aborted_by_key``), and the
connections accepted (``connections``).
"""

import email.policy
import hashlib
import json
import math
import os
import re
import socket
import sys
import threading
import time
from collections import Counter
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "fake-model-1"
FAIL_STATUS = re.compile(r"^fail-(\d{3})(?:-(once|x\d+))?$")
TOOLS_MODE = re.compile(r"^tools-(\d+)(?:-p(\d+))?$")
JSON_MODE = re.compile(r"^json(?:-.*)?$")
JSON_MARK = "FAKE-JSON:"
SAY_MARK = b"SAY:"
# The first bytes of each speech format, so that callers can check what they received.
AUDIO_OUT = {
    "mp3": (b"ID3\x04\x00\x00\x00\x00\x00\x00", "audio/mpeg"),
    "wav": (b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),
    "opus": (b"OggS\x00\x02", "audio/ogg"),
    "flac": (b"fLaC\x00\x00\x00\x22", "audio/flac"),
    "aac": (b"\xff\xf1\x50\x80", "audio/aac"),
    "pcm": (b"\x00\x00", "audio/pcm"),
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class ClientGone(Exception):
    """The client closed the connection while the fake was still answering."""


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


def _tool_calls_for(body, steps, parallel):
    """The tool calls of a ``tools-N`` answer, or None when the loop is over (or no tools)."""
    tools = body.get("tools") or []
    if not tools:
        return None, 0
    messages = body.get("messages", [])
    results = sum(1 for m in messages if m.get("role") == "tool")
    if results >= steps * parallel:
        return None, results
    name = (tools[0].get("function") or {}).get("name") or tools[0].get("name", "tool")
    step = results // parallel + 1
    calls = [
        {"id": f"call_{step}_{i + 1}", "name": name, "arguments": json.dumps({"step": step})}
        for i in range(parallel)
    ]
    return calls, results


def _text_parts(message):
    content = message.get("content")
    if isinstance(content, list):
        return [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return [str(content or "")]


def _sample_for(schema, name):
    """A value that fits a JSON schema: the answer of a model that read every field."""
    if not isinstance(schema, dict):
        return f"{name} value"
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        return {k: _sample_for(v, k) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample_for(schema.get("items") or {}, name)]
    return {"integer": 1, "number": 1.5, "boolean": True, "null": None}.get(kind, f"{name} value")


def _json_reply_for(body):
    """The text of a ``json`` mode answer (see the module docstring)."""
    for message in reversed(body.get("messages", [])):
        for part in reversed(_text_parts(message)):
            if JSON_MARK in part:
                return part.split(JSON_MARK, 1)[1].strip()
    response_format = body.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return json.dumps(_sample_for(schema, "value"))
    return json.dumps({"echo": _reply_for(body.get("messages", []))[len("echo: ") :]})


def _multipart(content_type, raw):
    """The fields of a multipart/form-data body: {name: (filename or None, bytes)}."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def _transcript_of(audio):
    """What the fake "hears": the text after SAY: in the bytes, else a digest of them."""
    if SAY_MARK in audio:
        said = audio.split(SAY_MARK, 1)[1].split(b"\x00", 1)[0]
        return said.decode("utf-8", "replace").strip()
    return f"audio of {len(audio)} bytes {hashlib.sha256(audio).hexdigest()[:12]}"


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Real servers send each SSE event at once; with Nagle on, loopback adds delayed-ACK stalls.
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        self._accepted_ns = time.monotonic_ns()
        self._count("connections")

    def parse_request(self):
        ok = super().parse_request()
        log = os.environ.get("FAKE_UPSTREAM_LOG")
        if ok and log:  # one line per request: the address it reached, then the path
            with open(log, "a") as f:
                f.write(f"{self.server.server_address[0]} {self.command} {self.path}\n")
        return ok

    # --- helpers -------------------------------------------------------------------------------

    def _trace(self, words):
        """With FAKE_TRACE_LOG set, one line per stream whose text carries a ``trace<n>`` word: the
        marker, then when the connection was accepted, the request read and the first delta sent
        (CLOCK_MONOTONIC ns, the clock benches read on this machine)."""
        log = os.environ.get("FAKE_TRACE_LOG")
        marker = next((w for w in words[:3] if w.startswith("trace")), None)
        if log and marker:
            with open(log, "a") as f:
                f.write(f"{marker} {self._accepted_ns} {self._received_ns} {time.monotonic_ns()}\n")

    def _fail_key(self):
        return self.headers.get("X-Fake-Key") or self.headers.get("Authorization") or ""

    def _count(self, name):
        with self.server.stats_lock:
            self.server.stats[name] += 1

    def _aborted(self):
        with self.server.stats_lock:
            self.server.stats["aborted_streams"] += 1
            self.server.stats["aborted_by_key"][self._fail_key()] += 1
        self.close_connection = True

    def _client_gone(self):
        """True when the client has closed its end (EOF readable without blocking)."""
        try:
            return self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # nothing to read: the client is still there
        except OSError:
            return True

    def _wait(self, seconds):
        """Sleep, but raise ClientGone as soon as the client disconnects."""
        deadline = time.monotonic() + seconds
        while True:
            if self._client_gone():
                raise ClientGone
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))

    def _write(self, data):
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            raise ClientGone from exc

    def _json(self, code, obj, headers=None):
        b = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b)

    def _error(self, code, message=None):
        headers = {}
        if code in (429, 503):
            headers["Retry-After"] = self.headers.get("X-Fake-Retry-After", "1")
        body = {
            "error": {
                "message": message or f"fake upstream answers {code}",
                "type": ERROR_TYPES.get(code, "server_error"),
                "code": None,
            }
        }
        return self._json(code, body, headers)

    def _redirect(self):
        """/redir/<rest> answers 307 to the decoy address: a guard must re-check where it is sent."""
        if not self.path.startswith("/redir/"):
            return False
        self.send_response(307)
        self.send_header("Location", f"http://127.0.0.2:{self.server.server_address[1]}/" + self.path[7:])
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def _key_failure(self):
        """An API key named fail-401… / fail-403… is refused on every endpoint."""
        auth = self.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else auth
        for code in (401, 403):
            if key.startswith(f"fail-{code}"):
                self._error(code, "Incorrect API key provided." if code == 401 else "Forbidden.")
                return True
        return False

    def _status_failure(self, model):
        """fail-<status>[-once|-x<N>]: answer the status (the first N times only with a suffix)."""
        m = FAIL_STATUS.match(model)
        if not m:
            return False
        code, times = int(m.group(1)), m.group(2)
        if times:
            limit = 1 if times == "once" else int(times[1:])
            key = (self._fail_key(), model)
            with self.server.stats_lock:
                seen = self.server.fail_counts[key]
                self.server.fail_counts[key] = seen + 1
            if seen >= limit:
                return False
        self._error(code, "Bad request: the fake was told to refuse it." if code == 400 else None)
        return True

    # --- endpoints -----------------------------------------------------------------------------

    def _count_request(self):
        with self.server.stats_lock:
            self.server.stats["requests"] += 1
            self.server.stats["requests_by_key"][self._fail_key()] += 1

    def do_GET(self):
        self._count_request()
        if self._redirect():
            return
        if self._key_failure():
            return
        if self.path.rstrip("/").endswith("/v1/models"):
            return self._json(
                200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]}
            )
        self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        self._received_ns = time.monotonic_ns()
        self._count_request()
        if self._redirect():
            return
        if self._key_failure():
            return
        if self.path.endswith("/audio/transcriptions"):
            return self._transcription(raw)
        body = json.loads(raw or b"{}")
        if self.path.endswith("/audio/speech"):
            return self._speech(body)
        if self.path.endswith("/chat/completions"):
            try:
                return self._chat(body)
            except ClientGone:
                return self._aborted()
        if self.path.endswith("/embeddings"):
            if self._status_failure(self.headers.get("X-Fake-Mode") or str(body.get("model") or "")):
                return
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

    def _transcription(self, raw):
        """/v1/audio/transcriptions: multipart ``file`` + ``model`` (+ ``language``, ``response_format``)."""
        fields = _multipart(self.headers.get("Content-Type", ""), raw)
        model = (fields.get("model") or (None, b""))[1].decode() or "whisper-1"
        with self.server.stats_lock:
            self.server.stats["by_model"][model] += 1
        if self._status_failure(self.headers.get("X-Fake-Mode") or model):
            return
        audio = (fields.get("file") or (None, b""))[1]
        if not audio:
            return self._error(400, "Missing file.")
        text = _transcript_of(audio)
        response_format = (fields.get("response_format") or (None, b"json"))[1].decode()
        if response_format == "text":
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if model.startswith("whisper"):
            usage = {"type": "duration", "seconds": round(len(audio) / 16000, 2)}
        else:
            words = len(text.split())
            tokens = max(1, len(audio) // 1600)
            usage = {"type": "tokens", "input_tokens": tokens, "output_tokens": words}
            usage["total_tokens"] = tokens + words
        answer = {"text": text, "usage": usage}
        language = (fields.get("language") or (None, b""))[1].decode()
        if language:
            answer["language"] = language
        return self._json(200, answer)

    def _speech(self, body):
        """/v1/audio/speech: JSON ``{model, input, voice, response_format}`` → audio bytes."""
        model = str(body.get("model") or "tts-1")
        with self.server.stats_lock:
            self.server.stats["by_model"][model] += 1
        if self._status_failure(self.headers.get("X-Fake-Mode") or model):
            return
        text = str(body.get("input") or "")
        fmt = str(body.get("response_format") or "mp3")
        if not text or not body.get("voice") or fmt not in AUDIO_OUT:
            return self._error(400, "input, voice and a known response_format are required.")
        magic, content_type = AUDIO_OUT[fmt]
        data = magic + b"SAY:" + text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chat(self, body):
        model = str(body.get("model") or MODEL)
        mode = self.headers.get("X-Fake-Mode") or model
        with self.server.stats_lock:
            self.server.stats["by_model"][model] += 1
        if self._status_failure(mode):
            return
        if mode == "hang":
            self._wait(float(self.headers.get("X-Fake-Hang", "30")))

        tool_calls, results = None, 0
        tools_mode = TOOLS_MODE.match(mode)
        if tools_mode:
            tool_calls, results = _tool_calls_for(
                body, int(tools_mode.group(1)), int(tools_mode.group(2) or 1)
            )
            text = "" if tool_calls else f"done after {results} tools"
        elif JSON_MODE.match(mode):
            text = _json_reply_for(body)
        else:
            text = _reply_for(body.get("messages", []))
        completion_tokens = len(text.split()) + 5 * len(tool_calls or [])
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": completion_tokens,
            "total_tokens": 10 + completion_tokens,
        }
        finish = "tool_calls" if tool_calls else "stop"
        if not body.get("stream"):
            message = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["arguments"]},
                    }
                    for c in tool_calls
                ]
            return self._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                },
            )
        return self._stream(body, model, mode, text, tool_calls, finish, usage)

    def _stream(self, body, model, mode, text, tool_calls, finish, usage):
        keep_alive = self.headers.get("X-Fake-Keep-Alive") == "1"
        chunked = mode == "drop-midway" or keep_alive
        default_delay = "0.05" if mode == "slow" else "0.01"
        delay = float(self.headers.get("X-Fake-Delay", default_delay))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()

        def event(obj):
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            if chunked:
                data = f"{len(data):x}\r\n".encode() + data + b"\r\n"
            self._write(data)

        def chunk(delta, finish_reason=None):
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }

        words = text.split(" ") if text else []
        for i, w in enumerate(words):
            event(chunk({"role": "assistant", "content": w} if i == 0 else {"content": " " + w}))
            if i == 0:
                self._trace(words)
            if i == 1 and mode == "error-midway":  # as OpenAI reports a failure mid-stream
                event({"error": {"message": "The server had an error mid-stream.", "type": "server_error"}})
                self.close_connection = True
                return
            if i == 1 and mode in ("drop-midway", "hang-midway"):
                if mode == "hang-midway":
                    self._wait(float(self.headers.get("X-Fake-Hang", "30")))
                self._count("dropped_streams")
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._wait(delay)
        for i, call in enumerate(tool_calls or []):
            head = {"index": i, "id": call["id"], "type": "function"}
            head["function"] = {"name": call["name"], "arguments": ""}
            event(chunk({"role": "assistant", "tool_calls": [head]} if i == 0 else {"tool_calls": [head]}))
            args = call["arguments"]
            half = len(args) // 2  # arguments arrive in pieces, as real providers send them
            for part in (args[:half], args[half:]):
                event(chunk({"tool_calls": [{"index": i, "function": {"arguments": part}}]}))
                self._wait(delay)
        event(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            u = chunk({})
            u["choices"] = []
            u["usage"] = usage
            event(u)
        event(b"[DONE]")
        if chunked:
            self._write(b"0\r\n\r\n")
        self._count("completed_streams")
        self.close_connection = not keep_alive


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # benches open hundreds of streams at once

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stats_lock = threading.Lock()
        self.stats = Counter()
        self.stats["by_model"] = Counter()
        self.stats["aborted_by_key"] = Counter()
        self.stats["requests_by_key"] = Counter()
        self.fail_counts = Counter()


class FakeUpstream:
    """Run the fake in a background thread: ``with FakeUpstream() as up: up.base_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = Server((host, port), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def stats(self) -> Counter:
        """Counters: requests, completed_streams, aborted_streams, dropped_streams, by_model,
        aborted_by_key (per X-Fake-Key or Authorization header)."""
        return self.server.stats

    def requests_for(self, key: str) -> int:
        """Requests that carried one fail key (an Authorization header value or X-Fake-Key)."""
        with self.server.stats_lock:
            return self.server.stats["requests_by_key"][key]

    def aborted_for(self, key: str) -> int:
        """Streams aborted by the client for one fail key (an Authorization header value or X-Fake-Key)."""
        with self.server.stats_lock:
            return self.server.stats["aborted_by_key"][key]

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
