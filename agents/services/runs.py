"""Writes of agent runs: open a run, close it (succeeded, failed or cancelled) with its steps,
tokens and outcome.

A run is history: its row is the record of what happened (steps, tool calls, tokens, error). An
explicit wake (``trigger="wake"``) is also audited as ``agent.woken``; chat turns, which run the same
loop many times a conversation, are recorded on their run rows only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import AuditLog, Organization, User
from accounts.services.audit import audit_entry
from agents.models import Agent, AgentRun, Provider
from core.batch_writer import BatchWriter
from core.db_threads import on_server_loop, run_db
from core.loop_writer import LoopRowWriter
from core.row_inserts import RowGroup, insert_rows

MAX_INPUT_CHARS = 100_000


def run_check(*, message: str, conversation_id: UUID | None, trigger: str, model: str) -> dict[str, Any]:
    """The fields of a new run that its caller gives, cut to their columns and cleaned as
    ``full_clean`` cleans them; raises ``ValidationError`` (by field) for any that is not valid.
    Only these are checked: the rest are the model's defaults (and a fresh id, whose uniqueness
    would be a query for nothing)."""
    fields = {
        "conversation_id": conversation_id,
        "trigger": trigger[:32],
        "input": message[:MAX_INPUT_CHARS],
        "model": model[:200],
    }
    errors: dict[str, list] = {}
    for name, value in fields.items():
        field = AgentRun._meta.get_field(name)
        if field.blank and value in field.empty_values:
            continue  # as Model.clean_fields: a blank value of a field that may be blank is kept
        try:
            fields[name] = field.clean(value, None)
        except ValidationError as exc:
            errors[name] = exc.error_list
    if errors:
        raise ValidationError(errors)
    return fields


def run_made(
    *, org: Organization, agent: Agent, user: User | None, checked: dict[str, Any], pk: UUID | None = None
) -> AgentRun:
    """A run (status running, not saved) with the fields :func:`run_check` returned, and ``pk``
    as its id when given (one drawn before the run was made), else the model's default."""
    given_id = {} if pk is None else {AgentRun._meta.pk.attname: pk}
    return AgentRun(
        org=org,
        agent=agent,
        user=user if user is not None and getattr(user, "is_authenticated", False) else None,
        status=AgentRun.Status.RUNNING,
        **checked,
        **given_id,
    )


def run_later(
    *,
    org: Organization,
    agent: Agent,
    user: User | None,
    message: str,
    conversation_id: UUID | None = None,
    trigger: str = "wake",
) -> tuple[UUID, Callable[[], AgentRun]]:
    """A run's id and the maker of its row, the fields checked now (:func:`run_check`; a bad one
    raises before anything starts) and the row made when the maker is called: for the runtime
    and a chat turn that opens a conversation, which need only the id before the run's first
    model call and make the row once that call is on its way."""
    checked = run_check(
        message=message, conversation_id=conversation_id, trigger=trigger, model=agent.model or ""
    )
    pk = AgentRun._meta.pk.get_default()  # the id the row would get
    return pk, functools.partial(run_made, org=org, agent=agent, user=user, checked=checked, pk=pk)


def run_build(
    *,
    org: Organization,
    agent: Agent,
    user: User | None,
    message: str,
    conversation_id: UUID | None = None,
    trigger: str = "wake",
) -> AgentRun:
    """A run (status running) of the agent for this message, checked but not saved yet, for a
    caller that writes its row with rows of its own and needs the instance before the run starts
    (``agent_events(run=…)``). The runtime, and a chat turn that opens a conversation, make it
    later (:func:`run_later`)."""
    _pk, make = run_later(
        org=org, agent=agent, user=user, message=message, conversation_id=conversation_id, trigger=trigger
    )
    return make()


def run_rows(run: AgentRun) -> tuple[AgentRun, AuditLog | None]:
    """A run that ``run_build`` or ``run_made`` made and, for an explicit wake, its ``agent.woken``
    audit row (with the request details of the calling context), both unsaved: for
    :func:`runs_write`."""
    audit = None
    if run.trigger == "wake":
        audit = audit_entry(
            org=run.org,
            actor=run.user,
            action="agent.woken",
            entity=run.agent,
            after={"run": run.pk, "conversation_id": run.conversation_id},
        )
    return run, audit


def run_row_groups(items: list[tuple[AgentRun, AuditLog | None]]) -> list[RowGroup]:
    """The rows of new runs (and their audit rows), for ``core.row_inserts.insert_rows``: a chat
    turn inserts its run with its messages (``chat.services.turns``)."""
    return [
        (AgentRun, [run for run, _ in items]),
        (AuditLog, [audit for _, audit in items if audit is not None]),
    ]


def runs_write(items: list[tuple[AgentRun, AuditLog | None]]) -> None:
    """Insert any number of new runs (and their audit rows), all or none, in one statement."""
    insert_rows(run_row_groups(items))


def run_save(run: AgentRun) -> AgentRun:
    """Insert a run that ``run_build`` or ``run_made`` made; an explicit wake is audited with it."""
    runs_write([run_rows(run)])
    return run


def _write_one(item: tuple[AgentRun, AuditLog | None]) -> None:
    runs_write([item])


# Under a server, the runs that start at the same moment (a burst of streams) are inserted
# together by one thread (``core.batch_writer``) instead of a transaction each on the db threads.
_run_saves: BatchWriter[tuple[AgentRun, AuditLog | None]] = BatchWriter(
    "agent-run-saves", runs_write, _write_one
)


# On a server's loop with PostgreSQL, without a thread (``core.loop_writer``).
_loop_run_saves: LoopRowWriter[tuple[AgentRun, AuditLog | None]] = LoopRowWriter(
    "agent-run-saves", run_row_groups, fallback=_run_saves
)


async def arun_save(run: AgentRun) -> AgentRun:
    """:func:`run_save` from the event loop: batched on a server's loop, else on a db thread."""
    if not on_server_loop():
        return await run_db(run_save, run)
    await _loop_run_saves.write(run_rows(run))
    return run


_FINISHED_FIELDS = [
    "status",
    "finish_reason",
    "output",
    "steps",
    "tool_calls",
    "prompt_tokens",
    "completion_tokens",
    "provider",
    "provider_source",
    "model",
    "duration_ms",
    "error",
    "finished_at",
]


def run_finish(
    *,
    run: AgentRun,
    status: str,
    finish_reason: str = "",
    output: str = "",
    steps: list[dict[str, Any]],
    tool_calls: int,
    prompt_tokens: int,
    completion_tokens: int,
    provider_id: UUID | None,
    provider_source: str,
    model: str,
    duration_ms: int,
    error: dict[str, Any] | None = None,
) -> AgentRun:
    """Close a run with its outcome and totals (one UPDATE; the row is the run's history).

    ``provider_id`` is that of an org provider the call resolved (a personal or platform key has
    none); one deleted while the run went on is recorded as no provider (a second UPDATE, only
    then), instead of a query on every run to make sure it is still there."""
    run.status = status
    run.finish_reason = finish_reason[:32]
    run.output = output
    run.steps = steps
    run.tool_calls = tool_calls
    run.prompt_tokens = prompt_tokens
    run.completion_tokens = completion_tokens
    run.provider_id = provider_id
    run.provider_source = provider_source[:16]
    run.model = (model or run.model)[:200]
    run.duration_ms = max(0, int(duration_ms))
    run.error = error
    run.finished_at = timezone.now()
    if transaction.get_connection().in_atomic_block:
        # A caller's transaction checks foreign keys only when it commits: ask first.
        if run.provider_id is not None and not Provider.objects.filter(pk=run.provider_id).exists():
            run.provider_id = None
        run.save(update_fields=_FINISHED_FIELDS)
        return run
    try:
        run.save(update_fields=_FINISHED_FIELDS)
    except IntegrityError:
        if run.provider_id is None or Provider.objects.filter(pk=run.provider_id).exists():
            raise
        run.provider_id = None  # its provider was deleted meanwhile
        run.save(update_fields=_FINISHED_FIELDS)
    return run
