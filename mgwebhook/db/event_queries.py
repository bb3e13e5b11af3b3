"""Queries behind inspecting, replaying, reconciling and pruning stored webhook events.

Every function takes the caller's session and never commits. Filter values are
bound parameters, and the recipient filter escapes LIKE wildcards, so quotes,
``%`` and ``_`` in a value match literally.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Dialect,
    and_,
    delete,
    exists,
    func,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mgwebhook.db.schema import (
    SUBJECT_TABLES,
    email_events,
    normalised_message_id,
    webhook_events,
    webhook_tokens,
)
from mgwebhook.db.subject_ids import (
    ids_condition,
    stored_id_column,
    stored_id_text,
    subject_key,
)

# raw_payload is NOT NULL, so prune marks a removed payload with the empty string.
# A received payload is never empty: it carries at least the signature fields.
PRUNED_PAYLOAD = ""


@dataclass(frozen=True)
class EventFilter:
    """Selection of stored webhook events; None leaves a criterion out."""

    event: str | None = None
    outcome: str | None = None
    # Normalised, without angle brackets.
    message_id: str | None = None
    # (subject_type, subject_id), for example ("document", "INV-1").
    subject: tuple[str, str] | None = None
    # Matched case-insensitively as a substring.
    recipient: str | None = None
    # received_at >= since and received_at < until, both aware datetimes.
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Subject:
    subject_type: str
    subject_id: str
    email_message_id: str | None
    email_status: str | None
    email_status_updated_at: datetime | None


def _conditions(selection: EventFilter, dialect: Dialect) -> list[ColumnElement[bool]]:
    events = webhook_events.c
    conditions: list[ColumnElement[bool]] = []
    if selection.event is not None:
        conditions.append(events.event == selection.event)
    if selection.outcome is not None:
        conditions.append(events.outcome == selection.outcome)
    if selection.message_id is not None:
        conditions.append(events.message_id == selection.message_id)
    if selection.recipient is not None:
        conditions.append(events.recipient.icontains(selection.recipient, autoescape=True))
    if selection.since is not None:
        conditions.append(events.received_at >= selection.since)
    if selection.until is not None:
        conditions.append(events.received_at < selection.until)
    if selection.subject is not None:
        subject_type, subject_id = selection.subject
        conditions.append(
            events.message_id.in_(_subject_message_ids(subject_type, subject_id, dialect))
        )
    return conditions


def _subject_message_ids(subject_type: str, subject_id: str, dialect: Dialect) -> Any:
    """Select every message id a subject had: its current one and those in its audit trail.

    Matching by message id also finds the subject's unmatched and duplicate events,
    which no audit row points to.
    """
    subject = SUBJECT_TABLES[subject_type]
    key = subject_key(subject, subject_id)
    # The audit trail names a row by the text of its id as read, such as the
    # canonical text of a UUID.
    audited = select(email_events.c.message_id).where(
        email_events.c.subject_type == subject_type,
        email_events.c.subject_id == (subject_id if key is None else str(key)),
    )
    if key is None:
        return audited
    current = select(normalised_message_id(subject.message_id)).where(
        ids_condition(subject, [key], dialect)
    )
    return current.union(audited)


def _dialect(session: AsyncSession) -> Dialect:
    return session.get_bind().dialect


async def list_events(
    session: AsyncSession, selection: EventFilter, limit: int, before_id: int | None = None
) -> Sequence[Any]:
    """Return up to `limit` matching events with an id below `before_id`, newest first."""
    statement = select(webhook_events).where(*_conditions(selection, _dialect(session)))
    if before_id is not None:
        statement = statement.where(webhook_events.c.id < before_id)
    statement = statement.order_by(webhook_events.c.id.desc()).limit(limit)
    return (await session.execute(statement)).all()


async def get_event(session: AsyncSession, webhook_event_id: int) -> Any:
    """Return the stored event with this id, or None."""
    statement = select(webhook_events).where(webhook_events.c.id == webhook_event_id)
    return (await session.execute(statement)).first()


async def set_outcome(
    session: AsyncSession,
    webhook_event_id: int,
    outcome: str,
    detail: str | None,
    processed_at: datetime | None,
) -> None:
    await session.execute(
        update(webhook_events)
        .where(webhook_events.c.id == webhook_event_id)
        .values(outcome=outcome, detail=detail, processed_at=processed_at)
    )


async def select_event_ids(session: AsyncSession, selection: EventFilter) -> list[int]:
    """Return the ids of matching events that still have their raw payload, oldest first."""
    statement = (
        select(webhook_events.c.id)
        .where(*_conditions(selection, _dialect(session)))
        .where(webhook_events.c.raw_payload != PRUNED_PAYLOAD)
        .order_by(webhook_events.c.id)
    )
    return list((await session.scalars(statement)).all())


async def existing_event_ids(session: AsyncSession, ids: Collection[int]) -> set[int]:
    statement = select(webhook_events.c.id).where(webhook_events.c.id.in_(list(ids)))
    return set((await session.scalars(statement)).all())


async def subjects_of_events(session: AsyncSession, rows: Sequence[Any]) -> dict[int, list[str]]:
    """Map each event id to the subjects ("document:INV-1") that have its Mailgun event.

    An event counts for a subject when an audit row points to it, or when the
    subject recorded the same Mailgun event from an earlier delivery (a duplicate).
    """
    if not rows:
        return {}
    ids = [row.id for row in rows]
    listed = set(ids)
    keys = {row.mailgun_event_id for row in rows if row.mailgun_event_id is not None}
    # Audit rows are found by message id, which is indexed. The Mailgun event
    # key has no index, so it is compared here.
    message_ids = {row.message_id for row in rows if row.mailgun_event_id is not None}
    statement = select(
        email_events.c.webhook_event_id,
        email_events.c.mailgun_event_id,
        email_events.c.subject_type,
        email_events.c.subject_id,
    ).where(
        or_(
            email_events.c.webhook_event_id.in_(ids),
            email_events.c.message_id.in_([m for m in message_ids if m is not None]),
        )
    )
    by_event_id: dict[int, set[str]] = defaultdict(set)
    by_key: dict[str, set[str]] = defaultdict(set)
    for webhook_event_id, key, subject_type, subject_id in await session.execute(statement):
        name = f"{subject_type}:{subject_id}"
        if webhook_event_id in listed:
            by_event_id[webhook_event_id].add(name)
        if key in keys:
            by_key[key].add(name)
    subjects = {}
    for row in rows:
        names = by_event_id[row.id] | by_key.get(row.mailgun_event_id, set())
        subjects[row.id] = sorted(names)
    return subjects


async def audit_events_of(session: AsyncSession, webhook_event_id: int) -> Sequence[Any]:
    """Return the audit rows that a stored event produced, in insertion order."""
    statement = (
        select(email_events)
        .where(email_events.c.webhook_event_id == webhook_event_id)
        .order_by(email_events.c.id)
    )
    return (await session.execute(statement)).all()


async def find_subjects(
    session: AsyncSession,
    message_id: str | None,
    subject_id: str | None,
    subject_types: Collection[str] = tuple(SUBJECT_TABLES),
) -> list[Subject]:
    """Return the documents and tenants with id `subject_id` or that had `message_id`.

    A subject had a message id when it is its current one or when an audit row
    of the subject records it (the row was re-sent since).
    """
    found: list[Subject] = []
    dialect = _dialect(session)
    for subject_type in subject_types:
        subject = SUBJECT_TABLES[subject_type]
        keys = []
        if subject_id is not None:
            keys.append(subject_key(subject, subject_id))
        matches: list[ColumnElement[bool]] = []
        if message_id is not None:
            # email_events.subject_id is text whatever the id type of the table.
            audited = await session.scalars(
                select(email_events.c.subject_id)
                .distinct()
                .where(
                    email_events.c.subject_type == subject_type,
                    email_events.c.message_id == message_id,
                )
            )
            keys.extend(subject_key(subject, text) for text in audited)
            matches.append(normalised_message_id(subject.message_id) == message_id)
        valid_keys = [key for key in keys if key is not None]
        if valid_keys:
            matches.append(ids_condition(subject, valid_keys, dialect))
        if not matches:
            continue
        updated_at = subject.status_updated_at
        statement = (
            select(
                stored_id_column(subject, dialect),
                subject.message_id,
                subject.status,
                updated_at if updated_at is not None else null(),
            )
            .where(or_(*matches))
            .order_by(subject.id)
        )
        for key, current_message_id, status, status_updated_at in await session.execute(statement):
            found.append(
                Subject(
                    subject_type,
                    stored_id_text(subject, dialect, key),
                    current_message_id,
                    status,
                    status_updated_at,
                )
            )
    return found


async def subject_timeline(
    session: AsyncSession, subject_type: str, subject_id: str
) -> Sequence[Any]:
    """Return a subject's audit rows in the order Mailgun saw the events."""
    statement = (
        select(email_events)
        .where(
            email_events.c.subject_type == subject_type,
            email_events.c.subject_id == subject_id,
        )
        .order_by(email_events.c.occurred_at, email_events.c.id)
    )
    return (await session.execute(statement)).all()


async def count_unmatched(session: AsyncSession, message_id: str) -> int:
    statement = (
        select(func.count())
        .select_from(webhook_events)
        .where(webhook_events.c.message_id == message_id, webhook_events.c.outcome == "unmatched")
    )
    return int(await session.scalar(statement) or 0)


async def reconcilable_event_ids(session: AsyncSession, received_since: datetime) -> list[int]:
    """Return unmatched events received since then whose message id now has a row.

    Events whose message id still has no row are left out, so a pass costs one
    indexed query when nothing has changed.
    """
    has_row = [
        exists().where(normalised_message_id(subject.message_id) == webhook_events.c.message_id)
        for subject in SUBJECT_TABLES.values()
    ]
    statement = (
        select(webhook_events.c.id)
        .where(
            webhook_events.c.outcome == "unmatched",
            webhook_events.c.received_at >= received_since,
            or_(*has_row),
        )
        .order_by(webhook_events.c.id)
    )
    return list((await session.scalars(statement)).all())


def _referenced() -> ColumnElement[bool]:
    return exists().where(email_events.c.webhook_event_id == webhook_events.c.id)


def _old_events(cutoff: datetime) -> list[ColumnElement[bool]]:
    return [webhook_events.c.received_at < cutoff, webhook_events.c.raw_payload != PRUNED_PAYLOAD]


def _old_tokens(cutoff: datetime) -> ColumnElement[bool]:
    return and_(webhook_tokens.c.received_at < cutoff, webhook_tokens.c.signed_at < cutoff)


async def count_prunable(
    session: AsyncSession, event_cutoff: datetime, token_cutoff: datetime
) -> tuple[int, int, int]:
    """Return how many events prune would delete, blank and how many tokens it would delete."""
    deletable = select(func.count()).where(*_old_events(event_cutoff), ~_referenced())
    blankable = select(func.count()).where(*_old_events(event_cutoff), _referenced())
    tokens = select(func.count()).select_from(webhook_tokens).where(_old_tokens(token_cutoff))
    return (
        int(await session.scalar(deletable.select_from(webhook_events)) or 0),
        int(await session.scalar(blankable.select_from(webhook_events)) or 0),
        int(await session.scalar(tokens) or 0),
    )


async def delete_old_events(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` events received before `cutoff` that no audit row points to.

    The NOT EXISTS is checked again by the DELETE itself, and the foreign key
    rejects the delete if an audit row pointing to the event commits in between.
    """
    batch = (
        select(webhook_events.c.id)
        .where(*_old_events(cutoff), ~_referenced())
        .order_by(webhook_events.c.id)
        .limit(batch_size)
    )
    ids = list((await session.scalars(batch)).all())
    if not ids:
        return 0
    result = await session.execute(
        delete(webhook_events).where(webhook_events.c.id.in_(ids), ~_referenced())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def blank_old_payloads(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Empty the raw payload of up to `batch_size` old events that audit rows point to."""
    batch = (
        select(webhook_events.c.id)
        .where(*_old_events(cutoff), _referenced())
        .order_by(webhook_events.c.id)
        .limit(batch_size)
    )
    ids = list((await session.scalars(batch)).all())
    if not ids:
        return 0
    result = await session.execute(
        update(webhook_events)
        .where(webhook_events.c.id.in_(ids))
        .values(raw_payload=PRUNED_PAYLOAD)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_old_tokens(session: AsyncSession, cutoff: datetime, batch_size: int) -> int:
    """Delete up to `batch_size` tokens both received and signed before `cutoff`."""
    batch = (
        select(webhook_tokens.c.token)
        .where(_old_tokens(cutoff))
        .order_by(webhook_tokens.c.token)
        .limit(batch_size)
    )
    tokens = list((await session.scalars(batch)).all())
    if not tokens:
        return 0
    result = await session.execute(delete(webhook_tokens).where(webhook_tokens.c.token.in_(tokens)))
    return int(result.rowcount)  # type: ignore[attr-defined]
