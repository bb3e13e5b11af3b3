"""Queries on mgwebhook's tables. Every function takes the caller's session and never commits.

The functions are synchronous so that a whole batch of events can run in one
worker-thread call on SQLite. Async callers run them through
`AsyncSession.run_sync`. The set-based statements of the ingest path are in
`mgwebhook.db.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from mgwebhook.db.batch import SubjectRow
from mgwebhook.db.schema import SUBJECT_TABLES, webhook_events
from mgwebhook.db.subject_ids import ids_condition


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC datetime; SQLite returns naive ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def set_webhook_event_outcome(
    session: Session, event_id: int, outcome: str, detail: str | None, processed_at: datetime
) -> None:
    session.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id)
        .values(outcome=outcome, detail=detail, processed_at=processed_at)
    )


def upsert_subject(
    session: Session,
    subject_type: str,
    key: Any,
    message_id: str,
    status: str,
    now: datetime,
) -> None:
    """Create the row with id `key` or set its message id and status.

    `key` is a value from `subject_ids.parse_subject_id`. On SQLite, every row
    whose id is one of the `uuid_spellings` of that UUID is updated, as a
    webhook updates every row it matches.
    """
    subject = SUBJECT_TABLES[subject_type]
    values: dict[str, Any] = {subject.message_id.key: message_id, subject.status.key: status}
    if subject.status_updated_at is not None:
        values[subject.status_updated_at.key] = now
    matching = ids_condition(subject, [key], session.get_bind().dialect)
    existing = session.scalar(select(subject.id).where(matching).limit(1))
    if existing is None:
        session.execute(subject.table.insert().values({subject.id.key: key, **values}))
    else:
        session.execute(update(subject.table).where(matching).values(values))


def get_subject(session: Session, subject_type: str, key: Any) -> SubjectRow | None:
    """Return the row with id `key`, a value from `subject_ids.parse_subject_id`, or None."""
    subject = SUBJECT_TABLES[subject_type]
    matching = ids_condition(subject, [key], session.get_bind().dialect)
    row = session.execute(
        select(subject.id, subject.status, subject.message_id)
        .where(matching)
        .order_by(subject.id)
        .limit(1)
    ).first()
    if row is None:
        return None
    return SubjectRow(subject_type, str(row[0]), row[1], row[2], key=row[0])


def unmatched_event_ids(session: Session, message_id: str) -> Sequence[int]:
    """Return ids of stored events for `message_id` still waiting for their row."""
    statement = (
        select(webhook_events.c.id)
        .where(webhook_events.c.message_id == message_id)
        .where(webhook_events.c.outcome == "unmatched")
        .order_by(webhook_events.c.id)
    )
    return list(session.scalars(statement).all())


def get_webhook_event(session: Session, event_id: int) -> Any:
    return (session.execute(select(webhook_events).where(webhook_events.c.id == event_id))).first()


def count_rows(session: Session, table: Table) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)
