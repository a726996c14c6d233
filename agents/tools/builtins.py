"""Built-in tools: current_time, web_fetch, memory_save and memory_search.

Imported by ``AgentsConfig.ready()``, which registers them. ``knowledge_search`` and
``create_board_task`` are registered the same way by the knowledge and boards apps.

``web_fetch`` reaches user-chosen URLs, so it goes through the guarded outbound client (private,
loopback, link-local and metadata addresses are refused on every redirect hop), reads at most
``MAX_FETCH_BYTES`` and gives up after a total time limit.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from core.outbound import guarded_async_client

from .html import html_to_text
from .registry import Tool, ToolContext, ToolError, register_tool

# --- current_time ------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(f"Unknown time zone {name!r}; use an IANA name such as Europe/Berlin.") from exc


def current_time(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """The current time in the asked zone, else the org's configured zone, the user's, or UTC."""
    name = (
        args.get("timezone")
        or ctx.config.get("default_timezone")
        or (getattr(ctx.user, "timezone", "") if ctx.user is not None else "")
        or "UTC"
    )
    now = datetime.now(UTC).astimezone(_zone(str(name)))
    return {
        "timezone": str(name),
        "iso": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "weekday": now.strftime("%A"),
        "unix": int(now.timestamp()),
    }


register_tool(
    Tool(
        name="current_time",
        description="The current date and time, in a given IANA time zone (default: the user's).",
        parameters={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "maxLength": 64,
                    "description": "IANA zone, e.g. Europe/Berlin",
                }
            },
            "additionalProperties": False,
        },
        handler=current_time,
        config_schema={
            "type": "object",
            "properties": {"default_timezone": {"type": "string", "maxLength": 64}},
            "additionalProperties": False,
        },
        touches_db=False,
    )
)


# --- web_fetch ---------------------------------------------------------------------------------

MAX_FETCH_BYTES = 2 * 1024 * 1024  # read cap of one fetch, whatever the page announces
DEFAULT_FETCH_CHARS = 20_000
MAX_FETCH_CHARS = 100_000
DEFAULT_FETCH_SECONDS = 15.0
MAX_FETCH_SECONDS = 60.0
MAX_REDIRECTS = 5
_TEXT_TYPES = re.compile(r"^(text/|application/(json|xml|xhtml\+xml|rss\+xml|atom\+xml|ld\+json|javascript))")


def _host_allowed(host: str, domains: list[str]) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (d.lower().strip(".") for d in domains) if d)


async def web_fetch(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Fetch a public web page (GET) and return its text: HTML is reduced to readable text."""
    url = args["url"].strip()
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolError(f"Not a valid URL: {exc}.") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ToolError("Only absolute http:// and https:// URLs can be fetched.")
    domains = ctx.config.get("allowed_domains") or []
    if domains and not _host_allowed(parsed.host, domains):
        raise ToolError(
            f"{parsed.host} is not among the domains this organisation allows web_fetch to reach."
        )
    max_chars = min(
        int(args.get("max_chars") or ctx.config.get("max_chars") or DEFAULT_FETCH_CHARS),
        int(ctx.config.get("max_chars") or MAX_FETCH_CHARS),
    )
    seconds = min(float(ctx.config.get("timeout_seconds") or DEFAULT_FETCH_SECONDS), MAX_FETCH_SECONDS)
    max_bytes = min(int(ctx.config.get("max_bytes") or MAX_FETCH_BYTES), MAX_FETCH_BYTES)

    headers = {
        "User-Agent": "AgentPlatform-web_fetch/1.0",
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.8,*/*;q=0.5",
    }
    try:
        async with asyncio.timeout(seconds):
            async with guarded_async_client(
                read_timeout=seconds, follow_redirects=True, max_redirects=MAX_REDIRECTS
            ) as client:
                async with client.stream("GET", url, headers=headers) as response:
                    body, truncated_bytes = await _read_capped(response, max_bytes)
    except TimeoutError as exc:
        raise ToolError(
            f"Fetching {url} took longer than {seconds:g} seconds.", code="ERR_TOOL_TIMEOUT"
        ) from exc
    except httpx.TooManyRedirects as exc:
        raise ToolError(f"{url} redirected more than {MAX_REDIRECTS} times.") from exc
    except httpx.TimeoutException as exc:
        raise ToolError(f"Fetching {url} timed out.", code="ERR_TOOL_TIMEOUT") from exc
    except httpx.HTTPError as exc:
        raise ToolError(f"Could not fetch {url}: {type(exc).__name__}.") from exc

    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if response.status_code >= 400:
        raise ToolError(
            f"{response.url} answered HTTP {response.status_code}.",
            details={"status": response.status_code},
        )
    if content_type and not _TEXT_TYPES.match(content_type):
        raise ToolError(f"{response.url} is {content_type}, not a text page; web_fetch reads text only.")
    raw = body.decode(response.charset_encoding or "utf-8", errors="replace")
    title = ""
    if content_type in ("text/html", "application/xhtml+xml") or (
        not content_type and "<html" in raw[:2000].lower()
    ):
        title, text = html_to_text(raw)
    else:
        text = raw.strip()
    truncated = truncated_bytes or len(text) > max_chars
    return {
        "url": str(response.url),
        "status": response.status_code,
        "content_type": content_type,
        "title": title,
        "text": text[:max_chars],
        "truncated": truncated,
    }


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """At most ``max_bytes`` of the body, and whether there was more."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        room = max_bytes - size
        if len(chunk) > room:
            chunks.append(chunk[:room])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


register_tool(
    Tool(
        name="web_fetch",
        description=(
            "Fetch a public web page by URL (GET) and return its readable text. Private and internal "
            "addresses are refused."
        ),
        parameters={
            "type": "object",
            "properties": {
                "url": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "http(s) URL"},
                "max_chars": {"type": "integer", "minimum": 10, "maximum": MAX_FETCH_CHARS},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        handler=web_fetch,
        config_schema={
            "type": "object",
            "properties": {
                "allowed_domains": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 253},
                    "maxItems": 200,
                },
                "max_chars": {"type": "integer", "minimum": 10, "maximum": MAX_FETCH_CHARS},
                "max_bytes": {"type": "integer", "minimum": 1024, "maximum": MAX_FETCH_BYTES},
                "timeout_seconds": {"type": "number", "minimum": 1, "maximum": MAX_FETCH_SECONDS},
            },
            "additionalProperties": False,
        },
        touches_db=False,
    )
)


# --- memory_save / memory_search ---------------------------------------------------------------

_WORDS = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_WORDS = 12
MEMORY_CANDIDATES = 500


def _need_agent(ctx: ToolContext) -> None:
    if ctx.agent is None:
        raise ToolError("Memory tools work for an agent; call them from an agent run or name the agent.")


def memory_save(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Remember a fact for this agent (and the current user)."""
    from agents.services.tools import memory_entry_create

    _need_agent(ctx)
    content = args["content"].strip()
    if not content:
        raise ToolError("content must not be blank.")
    tags = sorted({t.strip().lower() for t in args.get("tags") or [] if t.strip()})
    entry = memory_entry_create(org=ctx.org, agent=ctx.agent, user=ctx.user, content=content, tags=tags)
    return {"id": str(entry.pk), "saved": True, "tags": tags}


def memory_search(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    """Entries of this agent's memory that contain the query's words, best first.

    Score per distinct query word: 2 when it is a tag, 1 as a word of the content, 0.5 inside a
    longer word; the whole query found as a phrase adds 2. Ties go to the newest entry.
    """
    from django.db.models import Q

    from agents.selectors.tools import memory_entry_list

    _need_agent(ctx)
    limit = int(args.get("limit") or 5)
    query = args["query"].strip().lower()
    words = list(dict.fromkeys(w for w in _WORDS.findall(query) if len(w) > 1 or w.isdigit()))[
        :MAX_QUERY_WORDS
    ]
    if not words:
        raise ToolError("query needs at least one word.")
    match = Q()
    for word in words:
        match |= Q(content__icontains=word) | Q(tags__icontains=word)
    entries = memory_entry_list(
        org_id=ctx.org.pk, agent_id=ctx.agent.pk, user_id=ctx.user.pk if ctx.user is not None else None
    ).filter(match)[:MEMORY_CANDIDATES]
    scored = []
    for entry in entries:
        text = entry.content.lower()
        found = set(_WORDS.findall(text))
        tags = {str(t).lower() for t in entry.tags or []}
        score = 0.0
        for word in words:
            score += 2 if word in tags else 1 if word in found else 0.5 if word in text else 0
        if len(words) > 1 and query in text:
            score += 2
        if score:
            scored.append((score, entry.created_at, entry))
    scored.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return {
        "items": [
            {
                "id": str(e.pk),
                "content": e.content,
                "tags": e.tags,
                "score": s,
                "created_at": e.created_at.isoformat(),
            }
            for s, _, e in scored[:limit]
        ]
    }


register_tool(
    Tool(
        name="memory_save",
        description="Save a short fact or note to this agent's long-term memory so it can be found later.",
        parameters={
            "type": "object",
            "properties": {
                "content": {"type": "string", "minLength": 1, "maxLength": 4000},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 50}, "maxItems": 10},
            },
            "required": ["content"],
            "additionalProperties": False,
        },
        handler=memory_save,
    )
)

register_tool(
    Tool(
        name="memory_search",
        description="Search this agent's long-term memory for entries containing the query's words.",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 500},
                "limit": {"type": "integer", "minimum": 1, "maximum": 50},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        handler=memory_search,
    )
)
