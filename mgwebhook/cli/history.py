"""`mgwebhook history`: the current email_status of a row and its audit timeline."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mgwebhook.cli import render
from mgwebhook.cli.common import ConfigOption, fail, run, settings_from
from mgwebhook.cli.database import open_engine
from mgwebhook.cli.events import audit_record
from mgwebhook.cli.times import iso_time
from mgwebhook.db import event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors
from mgwebhook.db.schema import SUBJECT_TABLES
from mgwebhook.db.subject_ids import parse_subject_id
from mgwebhook.payloads import normalise_message_id


def history(
    target: Annotated[
        str,
        typer.Argument(
            help="A document id, a tenant id or a message id; document:ID or tenant:ID "
            "picks one kind of row."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per matching row.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Show the email_status of matching rows and their audit events in Mailgun time order.

    Events that did not change the status are marked. A message id finds every
    row that had it, including rows that were sent a new message since.
    """
    settings = settings_from(config)
    subject_types, subject_id, message_id = _parse_target(target)

    async def query() -> tuple[list[dict[str, Any]], int]:
        async with (
            open_engine(settings) as engine,
            translate_errors(),
            session_factory(engine)() as session,
            session.begin(),
        ):
            subjects = await event_queries.find_subjects(
                session, message_id, subject_id, subject_types
            )
            records = []
            for subject in subjects:
                timeline = await event_queries.subject_timeline(
                    session, subject.subject_type, subject.subject_id
                )
                current = normalise_message_id(subject.email_message_id)
                waiting = 0
                if current is not None:
                    waiting = await event_queries.count_unmatched(session, current)
                records.append(
                    {
                        "subject_type": subject.subject_type,
                        "subject_id": subject.subject_id,
                        "email_status": subject.email_status,
                        "email_status_updated_at": iso_time(subject.email_status_updated_at),
                        "email_message_id": current,
                        "unmatched_events": waiting,
                        "events": [audit_record(row) for row in timeline],
                    }
                )
            unmatched = 0
            if message_id is not None:
                unmatched = await event_queries.count_unmatched(session, message_id)
        return records, unmatched

    records, unmatched = run(query())
    if not records:
        message = f"no document, tenant or message id matches {target!r}"
        if unmatched:
            message += (
                f"; {unmatched} stored event(s) for this message id are unmatched, list them "
                f"with `mgwebhook events list --message-id {message_id}`"
            )
        fail(message)
    if as_json:
        for record in records:
            render.json_line(record)
        return
    render.history(records)


def _parse_target(target: str) -> tuple[tuple[str, ...], str | None, str | None]:
    """Return the subject types to search, the subject id and the message id for TARGET."""
    prefix, separator, rest = target.partition(":")
    if separator and prefix in SUBJECT_TABLES:
        if not rest:
            raise typer.BadParameter(f"{target!r} has no id after {prefix}:", param_hint="TARGET")
        try:
            parse_subject_id(SUBJECT_TABLES[prefix], rest)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="TARGET") from None
        return (prefix,), rest, None
    if not target.strip():
        raise typer.BadParameter("TARGET is empty; pass a document id, tenant id or message id")
    return tuple(SUBJECT_TABLES), target, normalise_message_id(target)
