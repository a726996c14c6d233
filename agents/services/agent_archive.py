"""Agent archives: export an agent as tar.gz (manifest.json, agent.json without secrets, context
files) and import one as a new agent. Archives are read in memory only and checked before anything
is written: a bad archive answers 400 ``ERR_BAD_ARCHIVE`` and leaves no row behind."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization, User
from accounts.services.audit import audit_record
from agents.models import Agent, Provider
from agents.services.agents import (
    KEY_PATTERN,
    agent_create,
    clean_id_list,
    free_agent_key,
)
from core.errors import ApplicationError, ValidationError


class BadArchive(ApplicationError):
    status_code = 400
    code = "ERR_BAD_ARCHIVE"
    message = "The file is not a valid agent export archive."


# --- export and import -------------------------------------------------------------------------

ARCHIVE_FORMAT = "agent-platform.agent"
ARCHIVE_VERSION = 1
MAX_ARCHIVE_BYTES = 5 * 1024 * 1024  # the upload limit of the import endpoint
MAX_MEMBER_BYTES = 1024 * 1024
MAX_UNPACKED_BYTES = 8 * 1024 * 1024
MAX_MEMBERS = 32
MANIFEST = "manifest.json"
AGENT_FILE = "agent.json"
PROMPT_FILE = "system_prompt.md"

# agent.json: field -> the JSON types it may hold ("system_prompt" travels as system_prompt.md).
_ARCHIVE_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "name": (str,),
    "description": (str,),
    "model": (str,),
    "temperature": (int, float, type(None)),
    "max_tokens": (int, type(None)),
    "max_tool_iterations": (int,),
    "tools": (list,),
    "knowledge_bases": (list,),
    "visibility": (str,),
    "provider": (dict, type(None)),
}


def _archive_agent(agent: Agent) -> dict[str, Any]:
    """agent.json: the agent without secrets or people; the provider by name and type, never by id.

    ``source`` names the exporting org and agent, so an import back into the same org can keep
    the knowledge base ids (elsewhere they would point at nothing, or at someone else's rows).
    """
    provider = agent.provider
    return {
        "key": agent.key,
        "name": agent.name,
        "description": agent.description,
        "model": agent.model,
        "temperature": agent.temperature,
        "max_tokens": agent.max_tokens,
        "max_tool_iterations": agent.max_tool_iterations,
        "tools": list(agent.tools or []),
        "knowledge_bases": list(agent.knowledge_bases or []),
        "visibility": agent.visibility,
        "provider": {"name": provider.name, "type": provider.provider_type} if provider else None,
        "source": {"org": str(agent.org_id), "agent": str(agent.pk)},
    }


def _add_file(tar: tarfile.TarFile, path: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def agent_export(*, agent: Agent, actor: User | None) -> tuple[str, bytes]:
    """A ``.tar.gz`` of the agent: ``manifest.json``, ``agent.json``, ``system_prompt.md``.

    Returns ``(file name, bytes)``. No secret is in it: provider keys stay on the provider (only its
    name and type travel), API keys never appear. The export is audited (it copies the agent out).
    """
    now = timezone.now()
    files = {
        AGENT_FILE: json.dumps(_archive_agent(agent), indent=2, ensure_ascii=False).encode(),
        PROMPT_FILE: (agent.system_prompt or "").encode(),
    }
    manifest = {
        "format": ARCHIVE_FORMAT,
        "version": ARCHIVE_VERSION,
        "exported_at": now.isoformat(),
        "platform_version": getattr(settings, "PLATFORM_VERSION", ""),
        "files": [
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in files.items()
        ],
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add_file(tar, MANIFEST, json.dumps(manifest, indent=2).encode(), now.timestamp())
        for path, data in files.items():
            _add_file(tar, path, data, now.timestamp())
    audit_record(org=agent.org, actor=actor, action="agent.exported", entity=agent)
    return f"{agent.key}.agent.tar.gz", buffer.getvalue()


@dataclass
class _Archive:
    manifest: dict[str, Any]
    files: dict[str, bytes]


def _bad(reason: str, **details: Any) -> BadArchive:
    return BadArchive(f"Not a valid agent archive: {reason}", details={"reason": reason, **details})


def _gunzip(data: bytes) -> bytes:
    """Decompress with a hard ceiling, so a gzip bomb costs at most ``MAX_UNPACKED_BYTES``."""
    if data[:2] != b"\x1f\x8b":
        raise _bad("the file is not gzip-compressed.")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, MAX_UNPACKED_BYTES + 1)
    except zlib.error as exc:
        raise _bad("the gzip data is corrupt.") from exc
    if len(raw) > MAX_UNPACKED_BYTES or inflater.unconsumed_tail:
        raise _bad(f"it unpacks to more than {MAX_UNPACKED_BYTES} bytes.")
    if not inflater.eof:
        raise _bad("the gzip data is truncated.")
    return raw


def _safe_member_name(member: tarfile.TarInfo) -> str:
    """The member's path if it is a plain relative path to a regular file, else 400.

    Stricter than tarfile's ``data`` extraction filter, whose checks run first: that filter refuses
    absolute paths, ``..`` escapes and links pointing outside; links of any kind, devices and
    FIFOs are refused here too, because nothing in an agent archive needs them.
    """
    name = member.name
    try:
        tarfile.data_filter(member, "/nonexistent-agent-import")
    except tarfile.FilterError as exc:
        raise _bad(f"unsafe member {name!r} ({type(exc).__name__}).", member=name) from exc
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise _bad(f"unsafe member path {name!r}.", member=name)
    if member.issym() or member.islnk():
        raise _bad(f"member {name!r} is a link.", member=name)
    if not member.isfile():
        raise _bad(f"member {name!r} is not a regular file.", member=name)
    if member.size > MAX_MEMBER_BYTES:
        raise _bad(f"member {name!r} is larger than {MAX_MEMBER_BYTES} bytes.", member=name)
    return "/".join(part for part in parts if part not in ("", "."))


def _read_archive(data: bytes) -> _Archive:
    """The archive's files, read in memory (nothing ever touches the disk), with its manifest."""
    raw = _gunzip(data)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            count = 0
            while (member := tar.next()) is not None:
                count += 1
                if count > MAX_MEMBERS:
                    raise _bad(f"more than {MAX_MEMBERS} members.")
                if member.isdir():
                    continue
                path = _safe_member_name(member)
                if path in files:
                    raise _bad(f"member {path!r} appears twice.", member=path)
                handle = tar.extractfile(member)
                content = handle.read(MAX_MEMBER_BYTES + 1) if handle is not None else b""
                if len(content) != member.size:
                    raise _bad(f"member {path!r} is truncated.", member=path)
                files[path] = content
    except (tarfile.TarError, EOFError, ValueError, UnicodeError, OSError) as exc:
        raise _bad("the file is not a readable tar archive.") from exc
    if MANIFEST not in files:
        raise _bad("manifest.json is missing.")
    try:
        manifest = json.loads(files.pop(MANIFEST))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad("manifest.json is not valid JSON.") from exc
    if not isinstance(manifest, dict):
        raise _bad("manifest.json is not a JSON object.")
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise _bad(f"manifest format must be {ARCHIVE_FORMAT!r}.", format=manifest.get("format"))
    if manifest.get("version") != ARCHIVE_VERSION:
        raise _bad(f"manifest version {manifest.get('version')!r} is not supported (only 1).")
    _check_listed_files(manifest, files)
    return _Archive(manifest=manifest, files=files)


def _check_listed_files(manifest: dict[str, Any], files: dict[str, bytes]) -> None:
    """Every file is listed in the manifest with its size and SHA-256, and every listed one is there."""
    listed = manifest.get("files")
    if not isinstance(listed, list) or not all(isinstance(entry, dict) for entry in listed):
        raise _bad("manifest files must be a list of {path, size, sha256}.")
    paths = {entry.get("path") for entry in listed}
    if AGENT_FILE not in paths:
        raise _bad("agent.json is not listed in the manifest.")
    if set(files) - paths:
        raise _bad("the archive holds files the manifest does not list.", files=sorted(set(files) - paths))
    for entry in listed:
        path = entry.get("path")
        if path not in files:
            raise _bad(f"{path!r} is listed but missing.", member=path)
        content = files[path]
        if entry.get("sha256") is not None and entry["sha256"] != hashlib.sha256(content).hexdigest():
            raise _bad(f"{path!r} does not match its checksum.", member=path)
        if entry.get("size") is not None and entry["size"] != len(content):
            raise _bad(f"{path!r} does not match its size.", member=path)


def _archive_fields(archive: _Archive, org: Organization) -> dict[str, Any]:
    """agent.json and system_prompt.md as keyword arguments of :func:`agent_create`."""
    try:
        payload = json.loads(archive.files[AGENT_FILE])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad("agent.json is not valid JSON.") from exc
    if not isinstance(payload, dict):
        raise _bad("agent.json is not a JSON object.")
    errors: dict[str, list[str]] = {}
    for field, kinds in _ARCHIVE_FIELDS.items():
        if field in payload and (
            not isinstance(payload[field], kinds) or isinstance(payload[field], bool) and bool not in kinds
        ):
            errors[field] = ["Has the wrong type."]
    for field in ("key", "name"):
        if not payload.get(field):
            errors[field] = ["This field is required."]
    if errors:
        raise _bad("agent.json has invalid fields.", fields=errors)
    try:
        prompt = archive.files.get(PROMPT_FILE, b"").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad("system_prompt.md is not UTF-8 text.") from exc

    provider = None
    wanted = payload.get("provider")
    if isinstance(wanted, dict) and isinstance(wanted.get("name"), str):
        provider = Provider.objects.filter(org=org, name=wanted["name"]).first()
    # Knowledge bases are ids of the exporting org: they only mean something back in that org
    # (checked either way: a malformed list is a malformed archive).
    try:
        knowledge_bases = clean_id_list("knowledge_bases", payload.get("knowledge_bases", []))
    except ValidationError as exc:
        raise _bad("agent.json has invalid fields.", **exc.details) from exc
    source = payload.get("source") if isinstance(payload.get("source"), dict) else {}
    same_org = str(source.get("org", "")) == str(org.pk)
    visibility = payload.get("visibility", Agent.Visibility.ORG)
    if visibility == Agent.Visibility.PUBLIC:
        visibility = Agent.Visibility.ORG  # publishing is an explicit step, never a side effect
    return {
        "key": free_agent_key(org, payload["key"], "-imported")
        if Agent.objects.filter(org=org, key=payload["key"]).exists()
        else payload["key"],
        "name": payload["name"],
        "description": payload.get("description", ""),
        "model": payload.get("model", ""),
        "provider": provider,
        "system_prompt": prompt,
        "temperature": payload.get("temperature"),
        "max_tokens": payload.get("max_tokens"),
        "max_tool_iterations": payload.get("max_tool_iterations", 20),
        "tools": payload.get("tools", []),
        "knowledge_bases": knowledge_bases if same_org else [],
        "visibility": visibility,
    }


@transaction.atomic
def agent_import(*, org: Organization, actor: User, data: bytes) -> Agent:
    """Create a new agent from an export archive; any defect answers 400 ``ERR_BAD_ARCHIVE``.

    The new agent gets a new id and ``actor`` as owner; a key used in the org already becomes
    ``<key>-imported[-n]``; the provider is matched by name in the org (else none). Nothing is
    written unless the whole archive is valid.
    """
    if len(data) > MAX_ARCHIVE_BYTES:
        raise _bad(f"the file is larger than {MAX_ARCHIVE_BYTES} bytes.")
    archive = _read_archive(data)
    fields = _archive_fields(archive, org)
    if not isinstance(fields["key"], str) or not KEY_PATTERN.match(fields["key"]):
        raise _bad("agent.json has invalid fields.", fields={"key": ["Use 1-64 of a-z, 0-9, _ and -."]})
    try:
        with transaction.atomic():
            agent = agent_create(org=org, actor=actor, **fields)
    except ValidationError as exc:
        raise _bad("agent.json has invalid fields.", **exc.details) from exc
    audit_record(
        org=org,
        actor=actor,
        action="agent.imported",
        entity=agent,
        after={"key": agent.key, "exported_at": archive.manifest.get("exported_at")},
    )
    return agent
