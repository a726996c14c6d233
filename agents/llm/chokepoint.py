"""The LLM choke point: every chat completion of the platform goes through ``astream`` / ``achat``.

One call walks its candidate providers in order (``agents.llm.resolve``: BYOK precedence, then
failover). For each candidate it runs the registered LLM guards' ``before`` (billing reserves, and
may refuse with an ApplicationError before anything is sent upstream), then calls the upstream with
the openai SDK. 429, 5xx, timeouts and connection errors are retried with exponential backoff and
jitter, honouring ``Retry-After`` (seconds, milliseconds or an HTTP date); a provider that asks for
more than ``RETRY_AFTER_CAP_SECONDS`` is not waited for but failed over. When a candidate's retries
are exhausted its health is marked (three failures in a row park it for a minute) and the next
candidate is tried; 401/403 fail over too, 400 does not (the request itself is bad). Once a stream
has delivered text to the caller it is never failed over: the caller gets an error after the
partial text instead.

Streaming yields ``delta`` chunks as they arrive; tool-call deltas are assembled by index and
emitted as one ``tool_call`` chunk per call at the end, then a ``done`` chunk with the LLMResult.
When the consumer stops iterating (``aclose()``, task cancelled), the upstream response is closed at
once so the provider stops generating.

After every call, success or not, each guard's ``after`` settles its reservation and every usage
listener receives exactly one usage event, off the streaming path: on success right after the
``done`` chunk has been handed over (when the consumer asks for the next chunk or closes the
stream; ``achat`` does both before it returns), on failure before the error is raised. Nothing runs
between two deltas. Listener failures are logged, never raised. When no guard and no listener is
registered, a call never leaves the event loop on the happy path.

Settings (read with getattr so that a missing one falls back): ``LLM_MAX_RETRIES`` (2 retries after
the first attempt), ``LLM_RETRY_BASE_SECONDS`` (0.5), ``LLM_RESOLVE_CACHE_SECONDS`` (5),
``LLM_DEFAULT_MODEL`` (gpt-4o-mini).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.db.models import Case, DateTimeField, F, Value, When
from django.utils import timezone

from agents.llm import resolve
from agents.llm.client import ResolvedProvider, make_client
from agents.llm.errors import ProviderAuthError, ProviderBadRequest, ProviderUnavailable
from agents.models import Provider
from agents.registries import guard_try_before, llm_guards_for, usage_listener_on_loop, usage_listeners
from core import context as request_context
from core.db_threads import on_server_loop, run_db
from core.db_threads import on_short_lived_loop as _on_short_lived_loop
from core.errors import ApplicationError
from core.metrics import LLM_TOKENS
from core.outbound import OutboundBlocked

logger = logging.getLogger(__name__)

RETRY_AFTER_CAP_SECONDS = 30.0
UNHEALTHY_AFTER_FAILURES = 3
UNHEALTHY_FOR_SECONDS = 60
MODELS_CACHE_SECONDS = 300
MAX_CLIENTS_PER_LOOP = 64

# The choke point sleeps through this name so that tests can record the delays it asks for.
_sleep = asyncio.sleep


@dataclass
class LLMResult:
    """The outcome of one LLM call: text, tool calls, tokens, and who served it."""

    content: str
    tool_calls: list[dict]  # {"id", "name", "arguments": <JSON string>}
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    provider_id: Any
    provider_source: str  # "personal", "agent", "org" or "platform"
    latency_ms: float
    provider_type: str = ""
    usage_estimated: bool = False  # the upstream sent no usage; tokens are estimated from text
    embeddings: list[list[float]] | None = None  # the vectors of an embedding call (``aembed``)


@dataclass
class LLMChunk:
    """One item of a stream: a text ``delta``, a completed ``tool_call``, or ``done`` with the result."""

    type: str
    text: str = ""
    tool_call: dict | None = None
    result: LLMResult | None = None


class _Failure(Exception):
    """One candidate failed; ``kind`` decides between retrying, failing over and giving up."""

    # retry: 429/5xx/timeout/connection (retried, then failover); auth: 401/403; blocked: the
    # outbound guard refused the address; not_found: 404 (model or path missing on this provider);
    # bad_request: 400/422 and other 4xx (no failover); interrupted: a stream broke after text.
    def __init__(
        self, kind: str, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def counts_against_health(self) -> bool:
        return self.kind in ("retry", "auth", "blocked", "interrupted")


# --- error classification ---------------------------------------------------------------------


def parse_retry_after(headers: Any, *, now: datetime | None = None) -> float | None:
    """Seconds a provider asks to wait: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date."""
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, kind):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body:
        return body[:300]
    return exc.message


def _classify(exc: BaseException) -> _Failure | None:
    """Map an SDK/transport exception to a _Failure; None for anything unexpected (a bug)."""
    if isinstance(exc, _Failure):
        return exc
    blocked = _cause(exc, OutboundBlocked)
    if blocked is not None:
        return _Failure("blocked", blocked.message)  # type: ignore[attr-defined]
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = _upstream_message(exc)
        if status in (401, 403):
            return _Failure("auth", message, status=status)
        if status == 404:
            return _Failure("not_found", message, status=status)
        if status in (408, 409, 425, 429) or status >= 500:
            return _Failure(
                "retry", message, status=status, retry_after=parse_retry_after(exc.response.headers)
            )
        return _Failure("bad_request", message, status=status)
    if isinstance(exc, openai.APITimeoutError):
        return _Failure("retry", "The provider did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = f": {cause}" if cause is not None and str(cause) else ""
        return _Failure("retry", f"Could not connect to the provider{detail}")
    if isinstance(exc, openai.APIError):  # an error event inside a stream
        return _Failure("retry", _upstream_message(exc))
    if isinstance(exc, httpx.TimeoutException):
        return _Failure("retry", "The provider did not answer in time.")
    if isinstance(exc, httpx.HTTPError | OSError):
        return _Failure("retry", f"The connection to the provider failed: {exc}")
    return None


def _error_for(failure: _Failure, attempts: list[dict]) -> ApplicationError:
    """The platform error a caller sees for the last failure of a call."""
    details = {"attempts": attempts} if attempts else {}
    if failure.kind == "auth":
        return ProviderAuthError(
            f"The language model provider refused the API key ({failure.message}). Check the provider's key.",
            details=details,
        )
    if failure.kind == "blocked":
        return OutboundBlocked(failure.message, details=details)
    if failure.kind in ("bad_request", "not_found"):
        return ProviderBadRequest(f"The provider rejected the request: {failure.message}", details=details)
    if failure.kind == "interrupted":
        return ProviderUnavailable(
            f"The provider's stream broke off after part of the answer: {failure.message}",
            details={**details, "partial": True},
        )
    return ProviderUnavailable(details=details)


def _retry_delay(attempt: int, retry_after: float | None) -> float | None:
    """Backoff before retry ``attempt`` (0-based); None when the provider asks for too long."""
    base = float(getattr(settings, "LLM_RETRY_BASE_SECONDS", 0.5))
    delay = base * (2**attempt)
    delay = min(delay + random.uniform(0, delay), RETRY_AFTER_CAP_SECONDS)  # noqa: S311 - jitter
    if retry_after is not None:
        if retry_after > RETRY_AFTER_CAP_SECONDS:
            return None
        delay = max(delay, retry_after)
    return delay


# --- clients ----------------------------------------------------------------------------------

# SDK clients per event loop (an httpx pool belongs to the loop that opened its connections) and
# per provider endpoint: building one costs tens of milliseconds (TLS context), so it is reused.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OrderedDict[tuple, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)


def _client(provider: ResolvedProvider) -> openai.AsyncOpenAI:
    loop = asyncio.get_running_loop()
    per_loop = _clients.get(loop)
    if per_loop is None:
        per_loop = _clients[loop] = OrderedDict()
    key = (
        provider.provider_type,
        provider.base_url,
        provider.api_key,
        tuple(sorted(provider.extra_headers.items())),
        settings.OUTBOUND_READ_TIMEOUT,
        settings.OUTBOUND_CONNECT_TIMEOUT,
    )
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = make_client(provider)
        if len(per_loop) > MAX_CLIENTS_PER_LOOP:
            _, old = per_loop.popitem(last=False)
            loop.create_task(old.close())
    else:
        per_loop.move_to_end(key)
    return client


def on_short_lived_loop() -> bool:
    """See :func:`core.db_threads.on_short_lived_loop`; clients of a short-lived loop must be
    closed before it ends."""
    return _on_short_lived_loop()


async def aclose_clients() -> None:
    """Close the SDK clients of the running loop (call before a short-lived loop ends)."""
    per_loop = _clients.pop(asyncio.get_running_loop(), None)
    for client in (per_loop or {}).values():
        try:
            await client.close()
        except Exception:  # closing is best effort
            logger.debug("closing an LLM client failed", exc_info=True)


# --- one call ---------------------------------------------------------------------------------


def _estimate_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    text = str(content or "")
    for call in message.get("tool_calls") or []:
        text += json.dumps(call)
    return text


class _Accumulator:
    """What one attempt has received: text, tool-call pieces by index, finish reason, usage."""

    def __init__(self) -> None:
        self.yielded_text = False
        self.reset()

    def reset(self) -> None:
        self.vectors: list[list[float]] | None = None
        self.content: list[str] = []
        self.tool_parts: dict[int, dict[str, str]] = {}
        self.finish_reason = ""
        self.usage: Any = None

    def feed(self, chunk: Any) -> str:
        """Take one stream chunk; return its text delta ('' if none)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        text = ""
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    text += delta.content
                for part in delta.tool_calls or []:
                    entry = self.tool_parts.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                    if part.id:
                        entry["id"] = part.id
                    if part.function is not None:
                        if part.function.name:
                            entry["name"] = part.function.name
                        if part.function.arguments:
                            entry["arguments"] += part.function.arguments
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if text:
            self.content.append(text)
        return text

    def feed_embeddings(self, response: Any) -> None:
        """Take an embeddings answer: the vectors in input order, and the prompt usage."""
        self.usage = response.usage
        self.vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
        self.finish_reason = "stop"

    def feed_response(self, response: Any) -> None:
        """Take a whole (non-streamed) completion."""
        self.usage = response.usage
        if not response.choices:
            return
        choice = response.choices[0]
        self.finish_reason = choice.finish_reason or ""
        message = choice.message
        if message.content:
            self.content.append(message.content)
        for index, call in enumerate(message.tool_calls or []):
            function = getattr(call, "function", None)
            self.tool_parts[index] = {
                "id": call.id or "",
                "name": function.name if function is not None else "",
                "arguments": (function.arguments if function is not None else "") or "",
            }

    def tool_calls(self) -> list[dict]:
        return [
            {
                "id": part["id"] or f"call_{index}",
                "name": part["name"],
                "arguments": part["arguments"] or "{}",
            }
            for index, part in sorted(self.tool_parts.items())
        ]

    def text(self) -> str:
        return "".join(self.content)


class _Call:
    """One choke-point call: its inputs, the candidates tried, and the single usage event."""

    def __init__(
        self,
        *,
        org: Any,
        messages: list[dict],
        user: Any,
        agent: Any,
        model: str | None,
        tools: list[dict] | None,
        temperature: float | None,
        max_tokens: int | None,
        purpose: str,
        stream: bool,
        inputs: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.org = org
        # Other request fields passed through to the upstream (tool_choice, response_format, stop,
        # …); the choke point owns model, messages, streaming and usage reporting.
        owned = ("model", "messages", "stream", "stream_options")
        self.extra = {k: v for k, v in (extra or {}).items() if k not in owned}
        context = request_context.current()
        self.channel = context.channel or ("api" if context.path else "")
        self.request_id = context.request_id if context.request_id != "-" else None
        self.api_key_id = str(context.api_key_id) if context.api_key_id is not None else None
        self.messages = messages
        self.inputs = inputs  # set for an embedding call instead of messages
        self.user = user
        self.agent = agent
        self.model = model
        self.tools = tools
        self.temperature = temperature if temperature is not None else getattr(agent, "temperature", None)
        self.max_tokens = max_tokens if max_tokens is not None else getattr(agent, "max_tokens", None)
        self.purpose = purpose
        self.stream = stream
        self.started = time.perf_counter()
        self.latency_ms: float | None = None  # set when the upstream answer is complete
        self.event_sent = False
        self.prompt_estimate = (
            sum(_estimate_tokens(text) for text in inputs)
            if inputs is not None
            else sum(_estimate_tokens(_message_text(m)) + 4 for m in messages)
        )

    def call_for(self, provider: ResolvedProvider) -> dict:
        """The dict the guards see (JSON-friendly)."""
        return {
            "org_id": str(self.org.pk),
            "user_id": str(self.user.pk) if getattr(self.user, "pk", None) is not None else None,
            "agent_id": str(self.agent.pk) if getattr(self.agent, "pk", None) is not None else None,
            "model": provider.model,
            "provider_id": str(provider.provider_id) if provider.provider_id else None,
            "provider_type": provider.provider_type,
            "provider_source": provider.source,
            "purpose": self.purpose,
            "channel": self.channel,
            "api_key_id": self.api_key_id,
            "request_id": self.request_id,
            "stream": self.stream,
            "estimated_prompt_tokens": self.prompt_estimate,
            "max_tokens": self.max_tokens,
            "estimated_tokens": self.prompt_estimate + (self.max_tokens or 0),
        }

    def params(self, provider: ResolvedProvider) -> dict:
        if self.inputs is not None:
            return {"model": provider.model, "input": self.inputs}
        params: dict[str, Any] = {**self.extra, "model": provider.model, "messages": self.messages}
        if self.tools:
            params["tools"] = self.tools
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        return params

    async def request(self, client: openai.AsyncOpenAI, params: dict, acc: _Accumulator) -> None:
        """One whole (not streamed) upstream request into ``acc``; ``agents.llm.media`` overrides
        it for the audio endpoints, which share everything else of the call."""
        if self.inputs is not None:
            acc.feed_embeddings(await client.embeddings.create(**params))
        else:
            acc.feed_response(await client.chat.completions.create(**params))

    def usage_of(self, acc: _Accumulator | None) -> dict:
        if acc is None:
            return {"prompt_tokens": 0, "completion_tokens": 0, "estimated": False}
        usage = acc.usage
        prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
        completion = getattr(usage, "completion_tokens", None) if usage is not None else None
        if prompt or completion:
            return {
                "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0),
                "estimated": False,
            }
        if self.inputs is not None:
            return {"prompt_tokens": self.prompt_estimate, "completion_tokens": 0, "estimated": True}
        completion = _estimate_tokens(acc.text()) + sum(
            _estimate_tokens(c["name"] + c["arguments"]) for c in acc.tool_calls()
        )
        return {"prompt_tokens": self.prompt_estimate, "completion_tokens": completion, "estimated": True}

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def event(self, provider: ResolvedProvider, usage: dict, error_code: str | None) -> dict:
        event = {
            "org_id": str(self.org.pk),
            "user_id": str(self.user.pk) if getattr(self.user, "pk", None) is not None else None,
            "agent_id": str(self.agent.pk) if getattr(self.agent, "pk", None) is not None else None,
            "provider_id": str(provider.provider_id) if provider.provider_id else None,
            "provider_type": provider.provider_type,
            "provider_source": provider.source,
            "model": provider.model,
            "purpose": self.purpose,
            "channel": self.channel,
            "api_key_id": self.api_key_id,
            "request_id": self.request_id,
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
            "usage_estimated": bool(usage.get("estimated")),
            "latency_ms": round(self.latency_ms if self.latency_ms is not None else self.elapsed_ms(), 3),
            "status": _event_status(error_code),
        }
        if error_code is not None:
            event["error_code"] = error_code
        return event

    async def before(self, call: dict) -> list[tuple[Any, Any]]:
        guards = llm_guards_for(call)
        if not guards:
            return []
        done: list[tuple[Any, Any]] = []
        rest = []
        for guard in guards:  # what a guard can answer from memory spares the database thread
            try_before = guard_try_before(guard)
            reservation = try_before(call) if try_before is not None else None
            if reservation is not None:
                done.append((guard[1], reservation))
            else:
                rest.append(guard)
        if not rest:
            return done
        try:
            return done + await run_db(_run_before, rest, call)
        except BaseException:
            await run_db(_release, call, done)
            raise

    async def settle(
        self,
        candidate: resolve.Candidate,
        call: dict,
        reservations: list[tuple[Any, Any]],
        acc: _Accumulator | None,
        *,
        failure: _Failure | None = None,
        error_code: str | None = None,
        final: bool,
    ) -> dict:
        """Settle the guards of one candidate, record its health and (``final``) send the event."""
        usage = self.usage_of(acc)
        event = None
        if final and not self.event_sent:
            self.event_sent = True
            event = self.event(candidate.provider, usage, error_code)
            if usage["prompt_tokens"]:
                LLM_TOKENS.labels("prompt", candidate.provider.provider_type).inc(usage["prompt_tokens"])
            if usage["completion_tokens"]:
                LLM_TOKENS.labels("completion", candidate.provider.provider_type).inc(
                    usage["completion_tokens"]
                )
        health = None
        if candidate.tracks_health:
            if failure is not None and failure.counts_against_health:
                health = "failed"
            elif (
                failure is None
                and error_code is None
                and (candidate.consecutive_failures or candidate.unhealthy_until is not None)
            ):
                health = "recovered"
        listeners = usage_listeners() if event is not None else []
        if listeners and on_server_loop():
            listeners = [listener for listener in listeners if not await _on_loop(listener, event)]
        if reservations or listeners or health:
            guard_usage = (
                usage
                if (acc is not None and (usage["prompt_tokens"] or usage["completion_tokens"]))
                else None
            )
            await run_db(
                _settle_sync,
                call=call,
                reservations=reservations,
                usage=guard_usage,
                listeners=listeners,
                event=event,
                health=health,
                candidate=candidate,
                failure=failure,
                org_id=self.org.pk,
            )
        return usage

    async def settle_refused(self, provider: ResolvedProvider, error: ApplicationError) -> None:
        """A guard refused the call (or no candidate could serve it): the one error event."""
        if self.event_sent:
            return
        self.event_sent = True
        listeners = usage_listeners()
        if listeners:
            event = self.event(provider, self.usage_of(None), error.code)
            await run_db(
                _settle_sync, call={}, reservations=[], usage=None, listeners=listeners, event=event,
                health=None, candidate=None, failure=None, org_id=self.org.pk,
            )  # fmt: skip

    async def run(self) -> AsyncIterator[LLMChunk]:
        """The generator behind astream and achat (see the module docstring)."""
        candidates = await resolve.aresolve_candidates(
            org=self.org, user=self.user, agent=self.agent, model=self.model
        )
        max_retries = int(getattr(settings, "LLM_MAX_RETRIES", 2))
        attempts: list[dict] = []
        provider = candidates[0].provider
        try:
            last: _Failure | None = None
            for candidate in candidates:
                provider = candidate.provider
                call = self.call_for(provider)
                reservations = await self.before(call)
                acc = _Accumulator()
                try:
                    client = _client(provider)
                    params = self.params(provider)
                    attempt = 0
                    while True:
                        acc.reset()
                        stream = None
                        try:
                            if self.stream:
                                stream = await client.stream_chat_completion(params)
                                async for chunk in stream:
                                    text = acc.feed(chunk)
                                    if text:
                                        acc.yielded_text = True
                                        yield LLMChunk(type="delta", text=text)
                            else:
                                await self.request(client, params, acc)
                            break
                        except Exception as exc:
                            failure = _classify(exc)
                            if failure is None:
                                raise
                            if acc.yielded_text:  # text reached the caller: report, never fail over
                                raise _Failure("interrupted", failure.message, status=failure.status) from exc
                            if failure.kind != "retry" or attempt >= max_retries:
                                raise failure from exc
                            delay = _retry_delay(attempt, failure.retry_after)
                            if delay is None:
                                raise failure from exc
                            attempt += 1
                            logger.info(
                                "LLM call to %s failed (%s), retry %d in %.2fs",
                                provider.name or provider.base_url, failure.message, attempt, delay,
                            )  # fmt: skip
                            await _sleep(delay)
                        finally:
                            if stream is not None:
                                try:
                                    await stream.close()  # stops the upstream at once on cancel
                                except Exception:
                                    logger.debug("closing an LLM stream failed", exc_info=True)
                except _Failure as failure:
                    attempts.append(
                        {
                            "provider_id": str(provider.provider_id) if provider.provider_id else None,
                            "source": provider.source,
                            "name": provider.name,
                            "kind": failure.kind,
                            "status": failure.status,
                            "message": failure.message[:300],
                        }
                    )
                    error = _error_for(failure, attempts)
                    final = failure.kind in ("interrupted", "bad_request")
                    partial = acc if failure.kind == "interrupted" else None  # tokens were spent
                    await self.settle(
                        candidate, call, reservations, partial,
                        failure=failure, error_code=error.code if final else None, final=final,
                    )  # fmt: skip
                    if final:
                        raise error from None
                    last = failure
                    continue
                except BaseException as exc:  # closed by the consumer, cancelled, or a bug
                    code = (
                        "ERR_CANCELLED"
                        if isinstance(exc, GeneratorExit | asyncio.CancelledError)
                        else "ERR_INTERNAL"
                    )
                    await asyncio.shield(
                        self.settle(candidate, call, reservations, acc, error_code=code, final=True)
                    )
                    raise

                # The answer is complete: hand it over first, settle (guards, health, the usage
                # event) when the consumer asks for more or closes the stream, so that the caller
                # never waits for billing between the last token and the result.
                self.latency_ms = self.elapsed_ms()
                usage = self.usage_of(acc)
                tool_calls = acc.tool_calls()
                result = LLMResult(
                    content=acc.text(),
                    tool_calls=tool_calls,
                    finish_reason=acc.finish_reason or ("tool_calls" if tool_calls else "stop"),
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    model=provider.model,
                    provider_id=provider.provider_id,
                    provider_source=provider.source,
                    latency_ms=self.latency_ms,
                    provider_type=provider.provider_type,
                    usage_estimated=usage["estimated"],
                    embeddings=acc.vectors,
                )
                try:
                    if self.stream:
                        for tool_call in tool_calls:
                            yield LLMChunk(type="tool_call", tool_call=tool_call)
                    yield LLMChunk(type="done", result=result)
                finally:
                    await asyncio.shield(self.settle(candidate, call, reservations, acc, final=True))
                return
            assert last is not None  # noqa: S101 - candidates is never empty
            raise _error_for(last, attempts)
        except ApplicationError as error:
            await self.settle_refused(provider, error)
            raise


async def _on_loop(listener, event: dict) -> bool:
    """Whether the listener's event-loop variant took the event (``usage_listener_on_loop``)."""
    on_loop = usage_listener_on_loop(listener)
    if on_loop is None:
        return False
    try:
        return await on_loop(event)
    except Exception:
        logger.exception("LLM usage listener failed")
        return True  # failed as the thread's call would have: logged, not retried


def _event_status(error_code: str | None) -> str:
    """ok, cancelled (the caller went away or stopped the turn) or error."""
    if error_code is None:
        return "ok"
    return "cancelled" if error_code == "ERR_CANCELLED" else "error"


def _run_before(guards: list, call: dict) -> list[tuple[Any, Any]]:
    """Run every guard's ``before``; if one refuses, release the reservations already made."""
    done: list[tuple[Any, Any]] = []
    try:
        for before, after in guards:
            done.append((after, before(call)))
    except BaseException:
        _release(call, done)
        raise
    return done


def _release(call: dict, done: list[tuple[Any, Any]]) -> None:
    for after, reservation in done:
        try:
            after(call, None, reservation)
        except Exception:
            logger.exception("LLM guard after() failed while releasing a refused call")


def _settle_sync(
    *,
    call: dict,
    reservations: list[tuple[Any, Any]],
    usage: dict | None,
    listeners: list,
    event: dict | None,
    health: str | None,
    candidate: resolve.Candidate | None,
    failure: _Failure | None,
    org_id: Any,
) -> None:
    for after, reservation in reservations:
        try:
            after(call, usage, reservation)
        except Exception:
            logger.exception("LLM guard after() failed")
    if health is not None and candidate is not None:
        try:
            _record_health(candidate, failure if health == "failed" else None, org_id=org_id)
        except Exception:
            logger.exception("recording provider health failed")
    if event is not None:
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("LLM usage listener failed")


def _record_health(candidate: resolve.Candidate, failure: _Failure | None, *, org_id: Any) -> None:
    """Count a failure (three in a row park the provider for a minute) or reset after a success."""
    rows = Provider.objects.filter(pk=candidate.provider.provider_id)
    if failure is None:
        rows.update(consecutive_failures=0, unhealthy_until=None)
    else:
        until = timezone.now() + timedelta(seconds=UNHEALTHY_FOR_SECONDS)
        changes: dict[str, Any] = {
            "consecutive_failures": F("consecutive_failures") + 1,
            # The UPDATE sees the old count: the third failure in a row parks the provider.
            "unhealthy_until": Case(
                When(consecutive_failures__gte=UNHEALTHY_AFTER_FAILURES - 1, then=Value(until)),
                default=F("unhealthy_until"),
                output_field=DateTimeField(),
            ),
            "last_error": failure.message[:500],
        }
        if failure.kind == "auth":
            changes["is_verified"] = False
        rows.update(**changes)
    resolve.invalidate(org_id=org_id)


# --- the interface ----------------------------------------------------------------------------


async def astream(
    *,
    org: Any,
    messages: list[dict],
    user: Any = None,
    agent: Any = None,
    model: str | None = None,
    tools: list[dict] | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    purpose: str = "chat",
    extra: dict[str, Any] | None = None,
) -> AsyncIterator[LLMChunk]:
    """Stream one completion: ``delta`` chunks, then ``tool_call`` chunks, then ``done``.

    Use it as ``async with contextlib.aclosing(astream(...)) as chunks: async for c in chunks``
    so that stopping early closes the upstream at once.
    """
    call = _Call(
        org=org, messages=messages, user=user, agent=agent, model=model, tools=tools,
        temperature=temperature, max_tokens=max_tokens, purpose=purpose, stream=True, extra=extra,
    )  # fmt: skip
    async with aclosing(call.run()) as chunks:
        async for chunk in chunks:
            yield chunk


async def achat(
    *,
    org: Any,
    messages: list[dict],
    user: Any = None,
    agent: Any = None,
    model: str | None = None,
    tools: list[dict] | None = None,
    temperature: float | None = None,
    max_tokens: int | None = None,
    purpose: str = "chat",
    extra: dict[str, Any] | None = None,
) -> LLMResult:
    """One whole completion (not streamed upstream), with retries and failover."""
    call = _Call(
        org=org, messages=messages, user=user, agent=agent, model=model, tools=tools,
        temperature=temperature, max_tokens=max_tokens, purpose=purpose, stream=False, extra=extra,
    )  # fmt: skip
    async with aclosing(call.run()) as chunks:
        async for chunk in chunks:
            if chunk.type == "done" and chunk.result is not None:
                return chunk.result
    raise ProviderUnavailable()  # unreachable: run() ends with done or raises


async def aembed(
    *,
    org: Any,
    inputs: list[str],
    model: str | None = None,
    user: Any = None,
    agent: Any = None,
    purpose: str = "embedding",
) -> LLMResult:
    """Embed ``inputs`` (vectors in ``result.embeddings``, in input order) through the same BYOK
    resolution, guards, retries, failover and usage event as completions."""
    call = _Call(
        org=org, messages=[], user=user, agent=agent,
        model=model or getattr(settings, "LLM_EMBEDDING_MODEL", "text-embedding-3-small"),
        tools=None, temperature=None, max_tokens=None, purpose=purpose, stream=False, inputs=list(inputs),
    )  # fmt: skip
    async with aclosing(call.run()) as chunks:
        async for chunk in chunks:
            if chunk.type == "done" and chunk.result is not None:
                return chunk.result
    raise ProviderUnavailable()  # unreachable: run() ends with done or raises


def chat(**kwargs: Any) -> LLMResult:
    """Sync wrapper of ``achat`` for views and Celery tasks (same keyword arguments)."""

    async def run() -> LLMResult:
        try:
            return await achat(**kwargs)
        finally:
            if on_short_lived_loop():  # never close the clients of a server's own loop
                await aclose_clients()

    return async_to_sync(run)()


def _models_cache_key(resolved: ResolvedProvider) -> str:
    raw = "\0".join(
        [
            str(resolved.provider_id or ""),
            resolved.base_url,
            resolved.api_key,
            json.dumps(resolved.extra_headers, sort_keys=True),
        ]
    )
    return "agents:llm:models:" + hashlib.sha256(raw.encode()).hexdigest()[:40]


async def alist_models(*, resolved: ResolvedProvider) -> list[str]:
    """The model ids the provider offers, cached 5 minutes per provider, base URL and key."""
    key = _models_cache_key(resolved)
    cached = await cache.aget(key)
    if cached is not None:
        return list(cached)
    try:
        page = await _client(resolved).models.list()
    except Exception as exc:
        failure = _classify(exc)
        if failure is None:
            raise
        raise _error_for(failure, []) from exc
    models = sorted({m.id for m in page.data if getattr(m, "id", None)})
    await cache.aset(key, models, MODELS_CACHE_SECONDS)
    return models


async def averify(*, resolved: ResolvedProvider, model: str | None = None) -> dict:
    """Check a provider: reachability and key (models list), or with ``model`` a one-token completion.

    Returns ``{"valid": True, "latency_ms"}`` or ``{"valid": False, "error", "error_code", "latency_ms"}``.
    """
    started = time.perf_counter()
    try:
        client = _client(resolved)
        if model:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
            )
        else:
            await client.models.list()
    except Exception as exc:
        failure = _classify(exc)
        if failure is None:
            logger.exception("verifying a provider failed unexpectedly")
            failure = _Failure("retry", "The provider could not be checked.")
        error = _error_for(failure, [])
        return {
            "valid": False,
            "error": failure.message,
            "error_code": error.code,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
    return {"valid": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
