"""OpenAI's wire formats: the objects and server-sent events of ``/v1/chat/completions`` and
``/v1/responses``, built from the run events of ``chat.services.openai_compat``.

Streams send what the official SDKs parse: chat completions as ``data:`` lines of
``chat.completion.chunk`` objects (role first, then content or tool-call deltas, then the finish
reason, the usage chunk when ``stream_options.include_usage`` asked for it, and ``data: [DONE]``);
the Responses API as ``event:`` + ``data:`` pairs whose data carries ``type`` and an increasing
``sequence_number``. A failure after the stream has started is sent in the stream, as OpenAI does:
``data: {"error": {…}}`` for chat completions, ``error`` then ``response.failed`` for responses.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from chat.services.openai_compat import Event, Outcome
from core.errors import ApplicationError, ValidationError
from core.errors.handlers import openai_envelope

logger = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
# Statuses that differ on this surface: the upstream refused the request the client composed
# (a raw call passes its fields through), which OpenAI's clients know as a 400.
OPENAI_STATUS = {"ERR_PROVIDER_BAD_REQUEST": 400}


def openai_status(exc: ApplicationError) -> int:
    return OPENAI_STATUS.get(exc.code, exc.status_code)


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def _data(obj: Any) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'), ensure_ascii=False)}\n\n"


def error_body(exc: BaseException) -> dict:
    """OpenAI's error body for a failure inside a stream (never a traceback)."""
    if isinstance(exc, ApplicationError):
        return openai_envelope(openai_status(exc), exc.code, exc.message, exc.details)
    logger.error("OpenAI-compatible stream failed", exc_info=exc)
    return openai_envelope(500, "ERR_INTERNAL", "Internal server error.")


def _tool_call_object(call: dict) -> dict:
    return {
        "id": call.get("id") or new_id("call_"),
        "type": "function",
        "function": {"name": call.get("name", ""), "arguments": call.get("arguments") or "{}"},
    }


def _usage(outcome: Outcome) -> dict:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


# --- chat completions --------------------------------------------------------------------------


def chat_completion(*, model: str, outcome: Outcome) -> dict:
    """The ``chat.completion`` object of a whole answer."""
    message: dict[str, Any] = {"role": "assistant", "content": outcome.content or None, "refusal": None}
    if outcome.tool_calls:
        message["tool_calls"] = [_tool_call_object(call) for call in outcome.tool_calls]
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "finish_reason": outcome.finish_reason, "logprobs": None}
        ],
        "usage": _usage(outcome),
        "system_fingerprint": None,
    }


async def chat_completion_frames(
    events: AsyncIterator[Event], *, model: str, include_usage: bool
) -> AsyncIterator[str]:
    """SSE frames of a streamed chat completion (see the module doc)."""
    base = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return _data({**base, "choices": [choice], **extra})

    # A content delta is the frame sent most: everything around the text is encoded once.
    head, _, tail = chunk({"content": "\0"}).partition('"\\u0000"')

    def content(text: str) -> str:
        return head + json.dumps(text, ensure_ascii=False) + tail

    yield chunk({"role": "assistant", "content": ""})
    tool_index = 0
    try:
        async for kind, value in events:
            if kind == "delta":
                yield content(value)
            elif kind == "tool_call":
                call = _tool_call_object(value)
                yield chunk({"tool_calls": [{"index": tool_index, **call}]})
                tool_index += 1
            elif kind == "done":
                yield chunk({}, value.finish_reason)
                if include_usage:
                    yield _data({**base, "choices": [], "usage": _usage(value)})
                yield DONE
    except Exception as exc:
        yield _data(error_body(exc))


# --- responses ---------------------------------------------------------------------------------


def _bad_input(reason: str) -> ValidationError:
    return ValidationError(f"input: {reason}", details={"fields": {"input": [reason]}})


def responses_messages(input_value: Any, instructions: str | None) -> list[dict]:
    """Chat messages from a Responses ``input`` (a string, or a list of message, ``function_call``
    and ``function_call_output`` items) and its ``instructions``."""
    messages: list[dict] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(input_value, str):
        messages.append({"role": "user", "content": input_value})
        return messages
    if not isinstance(input_value, list) or not input_value:
        raise _bad_input("a string or a non-empty list of items is required.")
    for index, item in enumerate(input_value):
        if not isinstance(item, dict):
            raise _bad_input(f"item {index} is not an object.")
        kind = item.get("type") or "message"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise _bad_input(f"item {index} has role {role!r}.")
            content = item.get("content")
            if isinstance(content, list):
                content = "".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
                )
            if not isinstance(content, str):
                raise _bad_input(f"item {index}: content must be a string or a list of text parts.")
            messages.append({"role": "system" if role == "developer" else role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id") or item.get("id") or new_id("call_"),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments") or "{}"},
            }
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and previous.get("tool_calls"):
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.get("call_id", ""),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        else:
            raise _bad_input(f"item {index} has type {kind!r}; expected message, function_call or "
                             "function_call_output.")  # fmt: skip
    return messages


def responses_tools(tools: list[dict] | None) -> list[dict] | None:
    """Responses function tools (``{type, name, description, parameters}``) as chat tools."""
    converted = []
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not tool.get("name"):
            reason = (
                f"item {index}: only function tools ({{type: function, name, parameters}}) are supported."
            )
            raise ValidationError(f"tools: {reason}", details={"fields": {"tools": [reason]}})
        function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        converted.append({"type": "function", "function": function})
    return converted or None


def responses_extra(data: dict) -> dict:
    """Other request fields of a Responses call in their chat-completions form."""
    extra: dict[str, Any] = {}
    choice = data.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        extra["tool_choice"] = {"type": "function", "function": {"name": choice.get("name", "")}}
    elif isinstance(choice, str):
        extra["tool_choice"] = choice
    if data.get("top_p") is not None:
        extra["top_p"] = data["top_p"]
    if data.get("parallel_tool_calls") is not None:
        extra["parallel_tool_calls"] = data["parallel_tool_calls"]
    fmt = (data.get("text") or {}).get("format") if isinstance(data.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        extra["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        extra["response_format"] = {"type": "json_object"}
    return extra


class ResponseBuilder:
    """The ``response`` object of one call, as it grows: message text and function calls."""

    def __init__(self, *, model: str, data: dict) -> None:
        self.id = new_id("resp_")
        self.created_at = int(time.time())
        self.model = model
        self.data = data
        self.message_id = new_id("msg_")
        self.text = ""
        self.calls: list[dict] = []

    def call_item(self, call: dict, *, status: str = "completed") -> dict:
        return {
            "type": "function_call",
            "id": new_id("fc_"),
            "call_id": call.get("id") or new_id("call_"),
            "name": call.get("name", ""),
            "arguments": call.get("arguments") or "{}",
            "status": status,
        }

    def message_item(self, *, status: str = "completed") -> dict:
        part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
        return {
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [part] if status == "completed" else [],
        }

    def output(self) -> list[dict]:
        items = [self.message_item()] if self.text or not self.calls else []
        return items + self.calls

    def obj(self, *, status: str, outcome: Outcome | None = None, error: dict | None = None) -> dict:
        usage = None
        if outcome is not None:
            usage = {
                "input_tokens": outcome.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": outcome.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            }
        incomplete = (
            {"reason": "max_output_tokens"} if outcome and outcome.finish_reason == "length" else None
        )
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": self.output() if status != "in_progress" else [],
            "usage": usage,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": self.data.get("instructions"),
            "max_output_tokens": self.data.get("max_output_tokens"),
            "metadata": self.data.get("metadata") or {},
            "parallel_tool_calls": self.data.get("parallel_tool_calls", True),
            "temperature": self.data.get("temperature"),
            "tool_choice": self.data.get("tool_choice") or "auto",
            "tools": self.data.get("tools") or [],
            "top_p": self.data.get("top_p"),
            "text": self.data.get("text") or {"format": {"type": "text"}},
        }

    def finish(self, outcome: Outcome) -> dict:
        """The completed response of a whole answer."""
        self.text = outcome.content
        self.calls = [self.call_item(call) for call in outcome.tool_calls]
        status = "incomplete" if outcome.finish_reason == "length" else "completed"
        return self.obj(status=status, outcome=outcome)


async def response_frames(events: AsyncIterator[Event], *, builder: ResponseBuilder) -> AsyncIterator[str]:
    """SSE frames of a streamed response (see the module doc)."""
    seq = 0

    def frame(kind: str, **fields: Any) -> str:
        nonlocal seq
        payload = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        return f"event: {kind}\n{_data(payload)}"

    yield frame("response.created", response=builder.obj(status="in_progress"))
    yield frame("response.in_progress", response=builder.obj(status="in_progress"))
    ids = {"item_id": builder.message_id, "output_index": 0, "content_index": 0}
    message_open = False
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

    def open_message() -> list[str]:
        return [
            frame(
                "response.output_item.added", output_index=0, item=builder.message_item(status="in_progress")
            ),
            frame("response.content_part.added", part=empty_part, **ids),
        ]

    def close_message() -> list[str]:
        part = {**empty_part, "text": builder.text}
        return [
            frame("response.output_text.done", text=builder.text, logprobs=[], **ids),
            frame("response.content_part.done", part=part, **ids),
            frame("response.output_item.done", output_index=0, item=builder.message_item()),
        ]

    try:
        async for kind, value in events:
            if kind == "delta":
                if not message_open:
                    message_open = True
                    for opened in open_message():
                        yield opened
                builder.text += value
                yield frame("response.output_text.delta", delta=value, logprobs=[], **ids)
            elif kind == "tool_call":
                if message_open:
                    for closed in close_message():
                        yield closed
                    message_open = False
                item = builder.call_item(value)
                index = (1 if builder.text else 0) + len(builder.calls)
                builder.calls.append(item)
                yield frame("response.output_item.added", output_index=index, item={**item, "arguments": "",
                            "status": "in_progress"})  # fmt: skip
                yield frame(
                    "response.function_call_arguments.delta",
                    item_id=item["id"], output_index=index, delta=item["arguments"],
                )  # fmt: skip
                yield frame(
                    "response.function_call_arguments.done",
                    item_id=item["id"], output_index=index, arguments=item["arguments"],
                )  # fmt: skip
                yield frame("response.output_item.done", output_index=index, item=item)
            elif kind == "done":
                if not builder.calls and not message_open:
                    message_open = True
                    for opened in open_message():
                        yield opened
                if message_open and not builder.calls:
                    for closed in close_message():
                        yield closed
                status = "incomplete" if value.finish_reason == "length" else "completed"
                yield frame(f"response.{status}", response=builder.obj(status=status, outcome=value))
    except Exception as exc:
        error = error_body(exc)["error"]
        yield frame("error", code=error["code"], message=error["message"], param=error["param"])
        failed = builder.obj(status="failed", error={"code": error["code"], "message": error["message"]})
        yield frame("response.failed", response=failed)
