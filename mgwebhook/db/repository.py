"""Queries on mgwebhook's tables. Every function takes the caller's session and never commits.

The functions are synchronous so that a whole batch of events can run in one
worker-thread call on SQLite. Async callers run them through
`Session.run_sync`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mgwebhook.db.schema import (
    SUBJECT_TABLES,
    email_events,
    normalised_message_id,
    webhook_events,
    webhook_tokens,
)


class TokenClaim(Enum):
    """What storing a token found."""

    NEW = "new"
    SAME_EVENT = "same-event"
    OTHER_EVENT = "other-event"


@dataclass(frozen=True)
class SubjectRow:
    subject_type: str
    subject_id: str
    email_status: str | None


def _insert(session: Session, table: Table) -> Any:
    """Return an INSERT that supports ON CONFLICT for the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC datetime; SQLite returns naive ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def claim_token(
    session: Session,
    token: str,
    fingerprint: str,
    signed_at: datetime,
    now: datetime,
) -> TokenClaim:
    """Store a verified token, or report which event already used it.

    The primary key makes this hold across processes: on PostgreSQL a second
    transaction inserting the same token waits until the first one commits or
    rolls back, then finds its row or takes the token itself.
    """
    statement = (
        _insert(session, webhook_tokens)
        .values(token=token, fingerprint=fingerprint, signed_at=signed_at, received_at=now)
        .on_conflict_do_nothing(index_elements=["token"])
        .returning(webhook_tokens.c.token)
    )
    if session.execute(statement).first() is not None:
        return TokenClaim.NEW
    stored = session.scalar(
        select(webhook_tokens.c.fingerprint).where(webhook_tokens.c.token == token)
    )
    return TokenClaim.SAME_EVENT if stored == fingerprint else TokenClaim.OTHER_EVENT


def insert_webhook_event(session: Session, **values: Any) -> int:
    """Insert a received post and return its id."""
    result = session.execute(
        webhook_events.insert().values(**values).returning(webhook_events.c.id)
    )
    return int(result.scalar_one())


def set_webhook_event_outcome(
    session: Session, event_id: int, outcome: str, detail: str | None, processed_at: datetime
) -> None:
    session.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id)
        .values(outcome=outcome, detail=detail, processed_at=processed_at)
    )


def lock_subjects(session: Session, message_id: str) -> list[SubjectRow]:
    """Return the rows whose normalised message id matches, locked for update.

    Rows are locked in a fixed order (documents, then tenants, by id) so that two
    transactions touching the same rows cannot deadlock. SQLite takes the write
    lock for the whole database at BEGIN IMMEDIATE instead.
    """
    rows = []
    for subject_type, table in SUBJECT_TABLES.items():
        statement = (
            select(table.c.id, table.c.email_status)
            .where(normalised_message_id(table.c.email_message_id) == message_id)
            .order_by(table.c.id)
            .with_for_update()
        )
        for subject_id, status in session.execute(statement):
            rows.append(SubjectRow(subject_type, subject_id, status))
    return rows


def insert_audit_event(session: Session, **values: Any) -> bool:
    """Append an audit event; return False if this subject already has this Mailgun event."""
    statement = (
        _insert(session, email_events)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["subject_type", "subject_id", "mailgun_event_id"])
        .returning(email_events.c.id)
    )
    return (session.execute(statement)).first() is not None


def set_subject_status(
    session: Session, subject_type: str, subject_id: str, status: str, now: datetime
) -> None:
    table = SUBJECT_TABLES[subject_type]
    session.execute(
        update(table)
        .where(table.c.id == subject_id)
        .values(email_status=status, email_status_updated_at=now)
    )


def upsert_subject(
    session: Session,
    subject_type: str,
    subject_id: str,
    message_id: str,
    status: str,
    now: datetime,
) -> None:
    """Create the row or set its message id and status."""
    table = SUBJECT_TABLES[subject_type]
    values = {
        "email_message_id": message_id,
        "email_status": status,
        "email_status_updated_at": now,
    }
    statement = _insert(session, table).values(id=subject_id, **values)
    session.execute(statement.on_conflict_do_update(index_elements=["id"], set_=values))


def get_subject(session: Session, subject_type: str, subject_id: str) -> Any:
    table = SUBJECT_TABLES[subject_type]
    return session.execute(select(table).where(table.c.id == subject_id)).first()


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
