"""Agent export and import: the archive's layout and what it leaves out (secrets, ids), round
trips into the same and another org, key clashes, and every kind of bad archive answering 400
``ERR_BAD_ARCHIVE`` with nothing written."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import AuditLog, Role
from agents.models import Agent, Provider
from agents.services.agent_archive import MAX_MEMBER_BYTES
from tests.accounts.factories_orgs import client_with_role
from tests.agents.test_agents import (
    TEST_TOOL,
    URL,
    detail,
    make_agent,
    make_provider,
    registered_test_tool,  # noqa: F401  (autouse fixture)
)
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope

pytestmark = pytest.mark.django_db

IMPORT_URL = f"{URL}/import"
PROVIDER_KEY = "sk-export-never-leaks-4242"


def unpack(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {member.name: tar.extractfile(member).read() for member in tar.getmembers() if member.isfile()}


def upload(client, data: bytes, name: str = "agent.tar.gz"):
    return client.post(
        IMPORT_URL,
        {"file": SimpleUploadedFile(name, data, content_type="application/gzip")},
        format="multipart",
    )


@pytest.fixture
def exported(member_client, org, member):
    """A rich agent of ``org`` and its export archive."""
    provider = make_provider(org, name="main", api_key=PROVIDER_KEY)
    kb = str(uuid.uuid4())
    agent = make_agent(
        org,
        member,
        key="scribe",
        name="Scribe",
        description="Writes notes",
        provider=provider,
        system_prompt="You are {{ agent_name }}.\nBe brief.",
        temperature=0.7,
        max_tokens=512,
        max_tool_iterations=7,
        tools=[TEST_TOOL],
        knowledge_bases=[kb],
    )
    response = member_client.get(detail(agent, "/export"))
    assert response.status_code == 200, response.content
    return agent, response


# --- export ------------------------------------------------------------------------------------


def test_export_is_a_gzip_tar_with_manifest_agent_and_prompt(exported):
    agent, response = exported

    assert response["Content-Type"] == "application/gzip"
    assert response["Content-Disposition"] == 'attachment; filename="scribe.agent.tar.gz"'
    files = unpack(response.content)
    assert set(files) == {"manifest.json", "agent.json", "system_prompt.md"}
    manifest = json.loads(files["manifest.json"])
    assert manifest["format"] == "agent-platform.agent" and manifest["version"] == 1
    assert manifest["exported_at"]
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == {"agent.json", "system_prompt.md"}
    for path, entry in listed.items():
        assert entry["sha256"] == hashlib.sha256(files[path]).hexdigest()
        assert entry["size"] == len(files[path])
    assert files["system_prompt.md"].decode() == "You are {{ agent_name }}.\nBe brief."
    payload = json.loads(files["agent.json"])
    assert payload["key"] == "scribe" and payload["name"] == "Scribe"
    assert payload["temperature"] == 0.7 and payload["max_tool_iterations"] == 7
    assert payload["tools"] == [TEST_TOOL]
    assert payload["provider"] == {"name": "main", "type": "openai_compat"}


def test_export_holds_no_secret_and_no_provider_or_owner_id(exported, member):
    agent, response = exported
    raw = gzip.decompress(response.content)

    assert PROVIDER_KEY.encode() not in raw
    assert PROVIDER_KEY[-4:].encode() not in raw  # not even masked
    assert str(agent.provider_id).encode() not in raw
    assert str(member.pk).encode() not in raw
    assert member.email.encode() not in raw


def test_export_is_audited(exported, org, member):
    agent, _response = exported

    log = AuditLog.objects.get(action="agent.exported")
    assert log.actor == member and log.entity_id == str(agent.pk)


def test_export_also_answers_an_accept_header_for_gzip(member_client, exported):
    agent, _ = exported

    response = member_client.get(detail(agent, "/export"), HTTP_ACCEPT="application/gzip")

    assert response.status_code == 200 and response["Content-Type"] == "application/gzip"


def test_export_needs_member_and_visibility(org, owner, viewer_client, other_member_client):
    agent = make_agent(org, owner, visibility="private")

    assert_envelope(viewer_client.get(detail(agent, "/export")), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(other_member_client.get(detail(agent, "/export")), 404)


@pytest.fixture
def viewer_client(org):
    return client_with_role(org, Role.VIEWER)[1]


@pytest.fixture
def other_member_client(org):
    return client_with_role(org, Role.MEMBER)[1]


# --- import: round trips -----------------------------------------------------------------------


def test_round_trip_into_the_same_org_makes_a_new_agent_with_a_fresh_key(
    member_client, org, member, exported
):
    agent, response = exported

    imported = upload(member_client, response.content)

    assert imported.status_code == 201, imported.content
    data = imported.json()
    assert data["id"] != str(agent.pk)
    assert data["key"] == "scribe-imported"
    assert data["owner"] == str(member.pk)
    assert data["provider"] == str(agent.provider_id)
    assert data["system_prompt"] == agent.system_prompt
    assert data["knowledge_bases"] == agent.knowledge_bases
    for field in (
        "name",
        "description",
        "model",
        "temperature",
        "max_tokens",
        "max_tool_iterations",
        "tools",
    ):
        assert data[field] == getattr(agent, field), field
    assert data["status"] == "stopped" and data["forked_from"] is None
    assert AuditLog.objects.filter(action="agent.imported", entity_id=data["id"]).exists()
    assert AuditLog.objects.filter(action="agent.created", entity_id=data["id"]).exists()

    again = upload(member_client, response.content).json()
    assert again["key"] == "scribe-imported-2"


def test_round_trip_into_another_org_matches_the_provider_by_name_and_drops_org_ids(
    exported, other_org, outsider
):
    _agent, response = exported
    theirs = make_provider(other_org, name="main", api_key="sk-theirs")

    data = upload(client_for(outsider), response.content).json()

    assert data["key"] == "scribe"
    assert data["provider"] == str(theirs.pk)
    assert data["knowledge_bases"] == []
    assert Agent.objects.get(pk=data["id"]).org == other_org


def test_import_without_a_matching_provider_leaves_it_empty(exported, other_org, outsider):
    _agent, response = exported

    data = upload(client_for(outsider), response.content).json()

    assert data["provider"] is None


def test_a_public_agent_comes_in_org_visible(member_client, org, member):
    agent = make_agent(org, member, key="star", visibility="public")
    archive = member_client.get(detail(agent, "/export")).content

    data = upload(member_client, archive).json()

    assert data["visibility"] == "org" and data["published_at"] is None


# --- import: bad archives ----------------------------------------------------------------------


def agent_json(**overrides) -> bytes:
    payload = {"key": "crafted", "name": "Crafted", "model": "m", "tools": [], "max_tool_iterations": 5}
    payload.update(overrides)
    return json.dumps(payload).encode()


def manifest_for(files: dict[str, bytes], **overrides) -> bytes:
    manifest = {
        "format": "agent-platform.agent",
        "version": 1,
        "exported_at": "2030-01-01T00:00:00Z",
        "files": [
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in files.items()
        ],
    }
    manifest.update(overrides)
    return json.dumps(manifest).encode()


def build(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    """A .tar.gz of regular files ``(name, bytes)`` and ready-made TarInfo entries (links...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def archive(extra: list | None = None, *, listed_extra: dict[str, bytes] | None = None, **manifest) -> bytes:
    """A valid archive of a crafted agent, plus ``extra`` members (listed in the manifest if given)."""
    files = {"agent.json": agent_json(), "system_prompt.md": b"Hello"}
    files.update(listed_extra or {})
    return build([("manifest.json", manifest_for(files, **manifest)), *files.items(), *(extra or [])])


def link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def special(name: str, kind) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


def test_the_crafted_archive_of_these_tests_is_itself_valid(member_client):
    response = upload(member_client, archive())

    assert response.status_code == 201, response.content
    assert response.json()["key"] == "crafted"
    assert response.json()["system_prompt"] == "Hello"


def _tar_without_gzip() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("manifest.json")
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


BAD_ARCHIVES = {
    "not gzip": lambda: b"just some text, not an archive",
    "tar without gzip": _tar_without_gzip,
    "gzip of not a tar": lambda: gzip.compress(b"x" * 2048),
    "truncated gzip": lambda: archive()[:-20],
    "empty tar": lambda: build([]),
    "missing manifest": lambda: build([("agent.json", agent_json())]),
    "manifest not json": lambda: build([("manifest.json", b"{nope"), ("agent.json", agent_json())]),
    "wrong format": lambda: archive(format="someone-else.agent"),
    "wrong version": lambda: archive(version=2),
    "missing agent.json": lambda: build(
        [("manifest.json", manifest_for({"system_prompt.md": b"x"})), ("system_prompt.md", b"x")]
    ),
    "listed file missing": lambda: build(
        [
            ("manifest.json", manifest_for({"agent.json": agent_json(), "system_prompt.md": b"x"})),
            ("agent.json", agent_json()),
        ]
    ),
    "checksum mismatch": lambda: build(
        [
            ("manifest.json", manifest_for({"agent.json": agent_json()})),
            ("agent.json", agent_json(name="Tampered")),
        ]
    ),
    "unlisted file": lambda: archive([("notes.txt", b"hi")]),
    "parent traversal": lambda: archive(listed_extra={"../evil.md": b"x"}),
    "nested traversal": lambda: archive(listed_extra={"context/../../evil.md": b"x"}),
    "absolute path": lambda: archive(listed_extra={"/etc/evil.md": b"x"}),
    "symlink": lambda: archive([link("system_prompt_link.md", "/etc/passwd")]),
    "relative symlink": lambda: archive([link("alias.md", "system_prompt.md")]),
    "hard link": lambda: archive([link("hard.md", "agent.json", tarfile.LNKTYPE)]),
    "fifo": lambda: archive([special("pipe", tarfile.FIFOTYPE)]),
    "device": lambda: archive([special("dev", tarfile.CHRTYPE)]),
    "oversized member": lambda: archive(listed_extra={"big.md": b"a" * (MAX_MEMBER_BYTES + 1)}),
    "duplicate member": lambda: archive([("agent.json", agent_json(key="second"))]),
    "agent.json not json": lambda: build(
        [("manifest.json", manifest_for({"agent.json": b"{oops"})), ("agent.json", b"{oops")]
    ),
    "agent.json a list": lambda: build(
        [("manifest.json", manifest_for({"agent.json": b"[]"})), ("agent.json", b"[]")]
    ),
}

BAD_FIELDS = {
    "bad key": {"key": "Not A Key"},
    "missing key": {"key": ""},
    "missing name": {"name": ""},
    "temperature too high": {"temperature": 5},
    "temperature a string": {"temperature": "hot"},
    "iterations over 50": {"max_tool_iterations": 99},
    "iterations a bool": {"max_tool_iterations": True},
    "tools not a list": {"tools": "current_time"},
    "unknown tool": {"tools": ["no_such_tool"]},
    "bad knowledge base id": {"knowledge_bases": ["nope"]},
    "bad visibility": {"visibility": "galaxy"},
}


def assert_rejected_without_writes(response) -> dict:
    error = assert_envelope(response, 400, "ERR_BAD_ARCHIVE")
    assert not Agent.objects.exists()
    assert not AuditLog.objects.filter(action__startswith="agent.").exists()
    return error


@pytest.mark.parametrize("case", list(BAD_ARCHIVES))
def test_a_bad_archive_answers_400_and_writes_nothing(member_client, case):
    response = upload(member_client, BAD_ARCHIVES[case]())

    error = assert_rejected_without_writes(response)
    assert error["details"]["reason"]


@pytest.mark.parametrize("case", list(BAD_FIELDS))
def test_invalid_agent_json_fields_answer_400_and_write_nothing(member_client, org, case):
    payload = agent_json(**BAD_FIELDS[case])
    files = {"agent.json": payload}

    response = upload(member_client, build([("manifest.json", manifest_for(files)), ("agent.json", payload)]))

    assert_rejected_without_writes(response)


def test_a_gzip_bomb_is_refused_without_unpacking_it_all(member_client):
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 5 * 1024 * 1024

    assert_rejected_without_writes(upload(member_client, bomb))


def test_a_file_over_5_mb_is_refused_before_it_is_read(member_client):
    response = upload(member_client, b"\x1f\x8b" + b"x" * (6 * 1024 * 1024))

    assert_envelope(response, 413)
    assert not Agent.objects.exists()


def test_a_file_just_over_the_archive_limit_is_a_bad_archive(member_client):
    response = upload(member_client, b"\x1f\x8b" + b"x" * (5 * 1024 * 1024))

    assert_rejected_without_writes(response)


def test_import_needs_a_file(member_client):
    response = member_client.post(IMPORT_URL, {}, format="multipart")

    error = assert_envelope(response, 400, "ERR_VALIDATION")
    assert "file" in error["details"]["fields"]


def test_import_needs_member(viewer_client, anon_client):
    assert_envelope(upload(viewer_client, archive()), 403, "ERR_ROLE_REQUIRED")
    assert_envelope(upload(anon_client, archive()), 401)
    assert not Agent.objects.exists()


def test_a_key_clash_and_an_overlong_key_still_fit(member_client, org, member):
    make_agent(org, member, key="k" * 64)
    payload = agent_json(key="k" * 64)

    response = upload(
        member_client,
        build([("manifest.json", manifest_for({"agent.json": payload})), ("agent.json", payload)]),
    )

    assert response.status_code == 201
    assert response.json()["key"] == "k" * 55 + "-imported"


def test_the_provider_field_never_takes_an_id(member_client, org):
    provider = Provider.objects.create(org=org, name="main")
    payload = agent_json(provider={"name": str(provider.pk), "type": "openai"})

    response = upload(
        member_client,
        build([("manifest.json", manifest_for({"agent.json": payload})), ("agent.json", payload)]),
    )

    assert response.json()["provider"] is None
