"""`mgwebhook events`: list, show, replay and prune stored webhook events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, run, settings_from
from mgwebhook.cli.database import open_engine
from mgwebhook.cli.times import iso_time, parse_duration, parse_time
from mgwebhook.db import event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors
from mgwebhook.db.event_queries import PRUNED_PAYLOAD, EventFilter
from mgwebhook.db.schema import SUBJECT_TABLES
from mgwebhook.db.subject_ids import parse_subject_id
from mgwebhook.ingest import utc_now
from mgwebhook.payloads import normalise_message_id
from mgwebhook.replay import ERROR, ReplayResult, replay_events
from mgwebhook.retention import PruneResult, prune

app = typer.Typer(help="Inspect, replay and prune stored webhook events.", no_args_is_help=True)

DEFAULT_LIMIT = 50


class StoredOutcome(StrEnum):
    """Outcomes kept with a stored event (a retry of a processed post stores nothing)."""

    applied = "applied"
    duplicate = "duplicate"
    unmatched = "unmatched"
    ignored = "ignored"
    unprocessable = "unprocessable"


OutcomeOption = Annotated[
    StoredOutcome | None,
    typer.Option("--outcome", help="Only events with this outcome.", show_default=False),
]
SinceOption = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="Only events received at or after this time: ISO 8601 (UTC if no offset) "
        "or a time ago such as 2h or 7d.",
        show_default=False,
    ),
]
UntilOption = Annotated[
    str | None,
    typer.Option(
        "--until",
        help="Only events received before this time: ISO 8601 (UTC if no offset) "
        "or a time ago such as 30m.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per line instead of a table.")
]


@app.command("list")
def list_events(
    event: Annotated[
        str | None,
        typer.Option(
            help="Only this Mailgun event type, such as delivered or failed.", show_default=False
        ),
    ] = None,
    outcome: OutcomeOption = None,
    message_id: Annotated[
        str | None,
        typer.Option(help="Only this message id; angle brackets are optional.", show_default=False),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            help="Only events for one row, as document:ID or tenant:ID, matched by every "
            "message id the row had.",
            show_default=False,
        ),
    ] = None,
    recipient: Annotated[
        str | None,
        typer.Option(
            help="Only recipients containing this text, ignoring case.", show_default=False
        ),
    ] = None,
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="Maximum number of events to print.")
    ] = DEFAULT_LIMIT,
    before_id: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Only events with a smaller id: the next page after a page ending at this id.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List stored webhook events, newest first."""
    settings = settings_from(config)
    start, end = _window(since, until, utc_now())
    selection = EventFilter(
        event=event.strip().lower() if event is not None else None,
        outcome=outcome.value if outcome is not None else None,
        message_id=_message_id(message_id, "--message-id"),
        subject=_subject(subject) if subject is not None else None,
        recipient=recipient,
        since=start,
        until=end,
    )

    async def query() -> tuple[Sequence[Any], dict[int, list[str]]]:
        async with (
            open_engine(settings) as engine,
            translate_errors(),
            session_factory(engine)() as session,
            session.begin(),
        ):
            # A row beyond `limit` means that a next page exists.
            rows = await event_queries.list_events(session, selection, limit + 1, before_id)
            subjects = await event_queries.subjects_of_events(session, rows[:limit])
        return rows, subjects

    rows, subjects = run(query())
    records = [event_record(row, subjects.get(row.id, [])) for row in rows[:limit]]
    next_before_id = records[-1]["id"] if len(rows) > limit else None
    if as_json:
        for record in records:
            render.json_line(record)
        return
    render.event_table(records, next_before_id)


@app.command("show")
def show_event(
    event_id: Annotated[int, typer.Argument(metavar="ID", help="Id of the stored event.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the raw payload, exactly as stored.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Show one stored event: its fields, its outcome, its audit rows and its raw payload."""
    settings = settings_from(config)

    async def query() -> tuple[Any, Sequence[Any], list[str]]:
        async with (
            open_engine(settings) as engine,
            translate_errors(),
            session_factory(engine)() as session,
            session.begin(),
        ):
            row = await event_queries.get_event(session, event_id)
            if row is None:
                return None, [], []
            audit_rows = await event_queries.audit_events_of(session, event_id)
            subjects = await event_queries.subjects_of_events(session, [row])
        return row, audit_rows, subjects.get(event_id, [])

    row, audit_rows, subjects = run(query())
    if row is None:
        fail(f"stored event {event_id} does not exist; list event ids with `mgwebhook events list`")
    if as_json:
        if row.raw_payload == PRUNED_PAYLOAD:
            fail(f"stored event {event_id} has no raw payload: `mgwebhook events prune` removed it")
        render.raw_text(row.raw_payload)
        return
    render.event_detail(
        event_record(row, subjects),
        [audit_record(audit_row) for audit_row in audit_rows],
        _pretty_payload(row.raw_payload),
    )


@app.command("replay")
def replay(
    event_ids: Annotated[
        list[int] | None,
        typer.Argument(
            metavar="[ID]...", help="Ids of the stored events to replay.", show_default=False
        ),
    ] = None,
    outcome: OutcomeOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Show what would change, then roll everything back."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Apply stored events again through the ingest rules.

    The usual case is `--outcome unmatched`: events that arrived before their
    row had the message id. Each event is replayed in its own transaction. Replaying an event twice
    changes nothing the second time. Events whose raw payload was pruned are left out.
    """
    filtered = outcome is not None or since is not None or until is not None
    if event_ids and filtered:
        fail("pass either event ids or --outcome/--since/--until, not both")
    if not event_ids and not filtered:
        fail(
            "no events selected; pass event ids, or --outcome (usually unmatched), "
            "--since or --until"
        )
    settings = settings_from(config)
    start, end = _window(since, until, utc_now())
    selection = EventFilter(
        outcome=outcome.value if outcome is not None else None, since=start, until=end
    )

    async def replay_selected() -> list[ReplayResult]:
        async with open_engine(settings) as engine:
            async with translate_errors(), session_factory(engine)() as session, session.begin():
                if event_ids:
                    ids = sorted(set(event_ids))
                    missing = sorted(
                        set(ids) - await event_queries.existing_event_ids(session, ids)
                    )
                    if missing:
                        missing_ids = ", ".join(str(event_id) for event_id in missing)
                        fail(
                            f"stored event(s) {missing_ids} do not exist; list event ids with "
                            "`mgwebhook events list`"
                        )
                else:
                    ids = await event_queries.select_event_ids(session, selection)
            with render.replay_progress(len(ids)) as advance:
                return await replay_events(
                    engine, ids, dry_run=dry_run, on_result=lambda _result: advance()
                )

    results = run(replay_selected())
    render.replay_summary(results, dry_run)
    if any(result.outcome == ERROR for result in results):
        raise typer.Exit(1)


@app.command("prune")
def prune_events(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Retention period, such as 90d: events received longer ago are removed.",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Remove stored events and tokens older than the retention period.

    Events that audit rows point to are kept with their raw payload removed.
    Tokens are kept at least as long as webhook.max_age_seconds, since a token
    deleted earlier would let its signature block be replayed.
    """
    try:
        retention = parse_duration(older_than)
    except typer.BadParameter as error:
        error.param_hint = "--older-than"
        raise
    if retention.total_seconds() <= 0:
        raise typer.BadParameter(
            f"{older_than!r} is not a positive duration; use at least 1s",
            param_hint="--older-than",
        )
    settings = settings_from(config)

    async def prune_old() -> PruneResult:
        async with open_engine(settings) as engine:
            return await prune(
                engine,
                retention,
                settings.webhook.max_age_seconds,
                utc_now(),
                dry_run=dry_run,
            )

    render.prune_summary(run(prune_old()))


def event_record(row: Any, subjects: list[str]) -> dict[str, Any]:
    """Return a stored event as a JSON-ready dict; the keys are part of the `--json` output."""
    return {
        "id": row.id,
        "received_at": iso_time(row.received_at),
        "occurred_at": iso_time(row.occurred_at),
        "event": row.event,
        "severity": row.severity,
        "reason": row.reason,
        "delivery_code": row.delivery_code,
        "message_id": row.message_id,
        "recipient": row.recipient,
        "mailgun_event_id": row.mailgun_event_id,
        "payload_format": row.payload_format,
        "outcome": row.outcome,
        "detail": row.detail,
        "processed_at": iso_time(row.processed_at),
        "subjects": subjects,
        "payload_pruned": row.raw_payload == PRUNED_PAYLOAD,
    }


def audit_record(row: Any) -> dict[str, Any]:
    """Return an audit row as a JSON-ready dict; the keys are part of the `--json` output."""
    return {
        "id": row.id,
        "subject_type": row.subject_type,
        "subject_id": row.subject_id,
        "event_type": row.event_type,
        "mailgun_event": row.mailgun_event,
        "mailgun_event_id": row.mailgun_event_id,
        "message_id": row.message_id,
        "occurred_at": iso_time(row.occurred_at),
        "recipient": row.recipient,
        "severity": row.severity,
        "reason": row.reason,
        "delivery_code": row.delivery_code,
        "status_before": row.status_before,
        "status_after": row.status_after,
        "status_changed": bool(row.status_changed),
        "webhook_event_id": row.webhook_event_id,
        "created_at": iso_time(row.created_at),
    }


def _message_id(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    normalised = normalise_message_id(value)
    if normalised is None:
        raise typer.BadParameter(
            f"message id {value!r} is empty once angle brackets are removed", param_hint=option
        )
    return normalised


def _subject(value: str) -> tuple[str, str]:
    subject_type, separator, subject_id = value.partition(":")
    if not separator or subject_type not in SUBJECT_TABLES or not subject_id:
        raise typer.BadParameter(
            f"{value!r} is not a subject; use document:ID or tenant:ID", param_hint="--subject"
        )
    try:
        parse_subject_id(SUBJECT_TABLES[subject_type], subject_id)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--subject") from None
    return subject_type, subject_id


def _pretty_payload(raw_payload: str) -> str | None:
    """Return the stored payload indented for reading, or None once pruned."""
    if raw_payload == PRUNED_PAYLOAD:
        return None
    try:
        return json.dumps(json.loads(raw_payload), indent=2, ensure_ascii=False)
    except ValueError:
        return raw_payload


def _window(
    since: str | None, until: str | None, now: datetime
) -> tuple[datetime | None, datetime | None]:
    """Parse --since and --until, rejecting a window that ends before it starts."""
    start = _time_option("--since", since, now)
    end = _time_option("--until", until, now)
    if start is not None and end is not None and start >= end:
        raise typer.BadParameter(
            f"--since {since} is not before --until {until}; swap them or widen the window"
        )
    return start, end


def _time_option(option: str, value: str | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value, now)
    except typer.BadParameter as error:
        error.param_hint = option
        raise
