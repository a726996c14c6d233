"""The tool registry: every tool an agent may call, built-in or registered by a higher app.

`agents` owns the registry; apps above it (knowledge registers ``knowledge_search``, boards
``create_board_task``) call :func:`register_tool` from their ``AppConfig.ready()``, so the runtime
never imports them. A tool is a name, a description, a JSON schema of its arguments and a handler
``handler(ctx, args) -> JSON-able result`` (plain or ``async``). Whether a tool is on in an org, and
its settings there, live in ``BuiltinToolConfig`` rows; an org without a row gets ``default_enabled``
and an empty config.

Arguments are validated here against a small, predictable subset of JSON Schema (object
properties, ``required``, types, ``enum``, bounds, string lengths, array items,
``additionalProperties: false``), enough to turn a model's bad call into a clear tool error instead
of an exception deep inside a handler.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from asgiref.sync import sync_to_async

from core.errors import ApplicationError

if TYPE_CHECKING:
    from accounts.models import Organization, User
    from agents.models import Agent

logger = logging.getLogger("agents.tools")

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _empty_object_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolContext:
    """What a tool handler knows about the call: who, for which agent and run, and its org config."""

    org: Organization
    agent: Agent | None = None
    user: User | None = None
    run_id: UUID | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    """One callable tool: its schema for the model, its handler, and its per-org settings shape."""

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Callable[[ToolContext, dict[str, Any]], Any]
    default_enabled: bool = True
    config_schema: dict[str, Any] = field(default_factory=_empty_object_schema)
    # Handlers that touch the ORM must run in a thread when called from the async runtime.
    touches_db: bool = True

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64 or not set(self.name) <= _NAME_CHARS:
            raise ValueError(f"Tool name {self.name!r} must be 1-64 of a-z, 0-9, _ and -.")
        if self.parameters.get("type") != "object":
            raise ValueError(f"Tool {self.name}: parameters must be a JSON schema of type object.")

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    def openai_schema(self) -> dict[str, Any]:
        """This tool as one entry of the chat completions ``tools`` parameter."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ToolError(ApplicationError):
    """A tool could not do what it was asked; the message is fed back to the model as the result."""

    status_code = 400
    code = "ERR_TOOL_FAILED"
    message = "The tool failed."


class UnknownTool(ApplicationError):
    status_code = 404
    code = "ERR_UNKNOWN_TOOL"
    message = "There is no tool of that name."


class ToolDisabled(ApplicationError):
    status_code = 403
    code = "ERR_TOOL_DISABLED"
    message = "This tool is disabled in your organisation; an admin can enable it under tools."


class InvalidToolArguments(ApplicationError):
    status_code = 400
    code = "ERR_TOOL_ARGUMENTS"
    message = "The tool arguments are not valid."


# --- the registry ------------------------------------------------------------------------------

_tools: dict[str, Tool] = {}


def register_tool(tool: Tool) -> Tool:
    """Add (or, for the same name, replace) a tool; called from ``AppConfig.ready()``."""
    _tools[tool.name] = tool
    return tool


def unregister_tool(name: str) -> None:
    """Remove a tool (tests that register their own tools clean up with this)."""
    _tools.pop(name, None)


def tool_names() -> list[str]:
    """Names of every registered tool, sorted."""
    return sorted(_tools)


def all_tools() -> list[Tool]:
    """Every registered tool, sorted by name."""
    return [_tools[name] for name in sorted(_tools)]


def get_tool(name: str) -> Tool | None:
    """The tool of that name, or None."""
    return _tools.get(name)


def tools_for_agent(agent: Agent, *, settings: dict[str, tuple[bool, dict]] | None = None) -> list[Tool]:
    """The agent's tools that exist and are enabled in its org, in the agent's order.

    ``settings`` is the org's ``{name: (enabled, config)}`` when the caller already has it.
    """
    if settings is None:
        from agents.selectors.tools import tool_settings

        settings = tool_settings(org_id=agent.org_id)
    seen: set[str] = set()
    tools = []
    for name in agent.tools or []:
        tool = _tools.get(name) if isinstance(name, str) else None
        if tool is None or name in seen:
            continue
        seen.add(name)
        if is_enabled(tool, settings):
            tools.append(tool)
    return tools


def is_enabled(tool: Tool, settings: dict[str, tuple[bool, dict]]) -> bool:
    """Whether the org enabled the tool (no row: the tool's default)."""
    row = settings.get(tool.name)
    return row[0] if row is not None else tool.default_enabled


def config_for(tool: Tool, settings: dict[str, tuple[bool, dict]]) -> dict[str, Any]:
    """The org's config of the tool ({} without a row)."""
    row = settings.get(tool.name)
    return dict(row[1] or {}) if row is not None else {}


def openai_tool_schemas(tools: Iterable[Tool]) -> list[dict[str, Any]]:
    """The ``tools`` parameter of a chat completion for these tools."""
    return [tool.openai_schema() for tool in tools]


# --- argument validation -----------------------------------------------------------------------

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


def _type_ok(value: Any, expected: str | list[str]) -> bool:
    names = expected if isinstance(expected, list) else [expected]
    for name in names:
        kinds = _TYPES.get(name)
        if kinds is None:
            return True  # a type this validator does not know: do not refuse on it
        if isinstance(value, bool) and name in ("integer", "number"):
            continue  # JSON booleans are not numbers, although Python says so
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return True
        if isinstance(value, kinds):
            return True
    return False


def validate_args(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Errors of ``value`` against ``schema`` (a small JSON Schema subset); [] when valid."""
    where = path or "arguments"
    errors: list[str] = []
    expected = schema.get("type")
    if expected is not None and not _type_ok(value, expected):
        shown = " or ".join(expected) if isinstance(expected, list) else expected
        return [f"{where}: expected {shown}, got {_json_type(value)}."]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: must be one of {', '.join(map(json.dumps, schema['enum']))}.")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: must be at least {schema['minLength']} characters.")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: must be at most {schema['maxLength']} characters.")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: must be at least {schema['minimum']}.")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: must be at most {schema['maximum']}.")
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: must have at most {schema['maxItems']} items.")
        if isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                errors += validate_args(schema["items"], item, f"{where}[{index}]")
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(f"{_join(path, key)}: is required.")
        for key, item in value.items():
            if key in properties:
                errors += validate_args(properties[key], item, _join(path, key))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{_join(path, key)}: is not a known argument.")
    return errors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if name == "integer" and isinstance(value, float):
            continue
        if _type_ok(value, name):
            return name
    return type(value).__name__


# --- running a tool ----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """A handler's result as plain JSON (UUIDs, datetimes and the like become strings)."""
    from django.core.serializers.json import DjangoJSONEncoder

    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


async def aexecute(tool: Tool, ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Validate and run one tool call; never raises for the tool's own failures.

    Returns ``{"result": …}`` or ``{"error": message, "code": …}``, plus ``duration_ms``. Only
    cancellation propagates (a cancelled run must stop).
    """
    started = time.perf_counter()
    errors = validate_args(tool.parameters, args)
    if errors:
        outcome: dict[str, Any] = {
            "error": "Invalid arguments: " + " ".join(errors),
            "code": InvalidToolArguments.code,
        }
    else:
        try:
            if tool.is_async:
                result = await tool.handler(ctx, args)
            elif tool.touches_db:
                result = await sync_to_async(tool.handler, thread_sensitive=True)(ctx, args)
            else:
                result = tool.handler(ctx, args)
            outcome = {"result": jsonable(result)}
        except asyncio.CancelledError:
            raise
        except ApplicationError as exc:
            outcome = {"error": exc.message, "code": exc.code}
        except TimeoutError:
            outcome = {"error": f"The tool {tool.name} timed out.", "code": "ERR_TOOL_TIMEOUT"}
        except Exception as exc:  # a broken tool must not break the run; the model hears about it
            logger.exception("tool %s failed", tool.name)
            outcome = {"error": f"The tool {tool.name} failed: {type(exc).__name__}.", "code": ToolError.code}
    outcome["duration_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return outcome
