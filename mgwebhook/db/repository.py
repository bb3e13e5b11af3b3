"""Queries on mgwebhook's tables. Every function takes the caller's session and never commits.

The functions are synchronous so that a whole batch of events can run in one
worker-thread call on SQLite. Async callers run them through
`AsyncSession.run_sync`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mgwebhook.db.schema import (
    SUBJECT_TABLES,
    SubjectTable,
    email_events,
    normalised_message_id,
    webhook_events,
    webhook_tokens,
)


class TokenClaim(Enum):
    """Result of storing a token: new, or already used by the same or another event."""

    NEW = "new"
    SAME_EVENT = "same-event"
    OTHER_EVENT = "other-event"


@dataclass(frozen=True)
class SubjectRow:
    subject_type: str
    subject_id: str
    email_status: str | None
    email_message_id: str | None = None
    # The id as the database returns it (text, integer or UUID); subject_id is its text.
    key: Any = None


def _insert(session: Session, table: Table) -> Any:
    """Return an INSERT that supports ON CONFLICT for the session's dialect."""
    if _dialect(session) == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _hot_statements(dialect: str) -> dict[str, Any]:
    """Return the ingest statements for the dialect and the subject tables in use."""
    return _build_hot_statements(dialect, tuple(SUBJECT_TABLES.values()))


@functools.cache
def _build_hot_statements(dialect: str, subjects: tuple[SubjectTable, ...]) -> dict[str, Any]:
    """Statements of the ingest path, built once per dialect.

    Building a statement with `.values()` for every event costs more than
    running it; these take their values as execution parameters instead.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statements: dict[str, Any] = {
        "claim_token": insert(webhook_tokens)
        .on_conflict_do_nothing(index_elements=["token"])
        .returning(webhook_tokens.c.token),
        "token_fingerprint": select(webhook_tokens.c.fingerprint).where(
            webhook_tokens.c.token == bindparam("token")
        ),
        "insert_event": webhook_events.insert().returning(webhook_events.c.id),
        "insert_audit": insert(email_events)
        .on_conflict_do_nothing(index_elements=["subject_type", "subject_id", "mailgun_event_id"])
        .returning(email_events.c.id),
    }
    for subject in subjects:
        values: dict[str, Any] = {subject.status.key: bindparam("status_value")}
        if subject.status_updated_at is not None:
            values[subject.status_updated_at.key] = bindparam("updated_at_value")
        statements[f"set_status_{subject.kind}"] = (
            update(subject.table).where(subject.id == bindparam("subject_id_value")).values(values)
        )
        statements[f"lock_{subject.kind}"] = (
            select(subject.id, subject.status)
            .where(normalised_message_id(subject.message_id) == bindparam("message_id"))
            .order_by(subject.id)
            .with_for_update()
        )
    return statements


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
    statements = _hot_statements(_dialect(session))
    values = {
        "token": token,
        "fingerprint": fingerprint,
        "signed_at": signed_at,
        "received_at": now,
    }
    if session.execute(statements["claim_token"], values).first() is not None:
        return TokenClaim.NEW
    stored = session.scalar(statements["token_fingerprint"], {"token": token})
    return TokenClaim.SAME_EVENT if stored == fingerprint else TokenClaim.OTHER_EVENT


def insert_webhook_event(session: Session, **values: Any) -> int:
    """Insert a received post and return its id."""
    statement = _hot_statements(_dialect(session))["insert_event"]
    return int(session.execute(statement, values).scalar_one())


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

    Rows are locked in a fixed order (documents, then tenants, by id), and
    `ingest.ingest_batch` applies a batch in message id order, so two batches on
    PostgreSQL take the locks of shared rows in the same order. SQLite takes the
    write lock for the whole database at BEGIN IMMEDIATE instead.
    """
    statements = _hot_statements(_dialect(session))
    rows = []
    for subject_type in SUBJECT_TABLES:
        result = session.execute(statements[f"lock_{subject_type}"], {"message_id": message_id})
        for key, status in result:
            rows.append(SubjectRow(subject_type, str(key), status, key=key))
    return rows


def insert_audit_event(session: Session, **values: Any) -> bool:
    """Append an audit event; return False if this subject already has this Mailgun event."""
    statement = _hot_statements(_dialect(session))["insert_audit"]
    return session.execute(statement, values).first() is not None


def set_subject_status(session: Session, subject: SubjectRow, status: str, now: datetime) -> None:
    statement = _hot_statements(_dialect(session))[f"set_status_{subject.subject_type}"]
    values = {"subject_id_value": subject.key, "status_value": status, "updated_at_value": now}
    session.execute(statement, values)


def parse_subject_id(subject_type: str, text: str) -> Any:
    """Convert an id typed by a user to the type of the subject table's id column."""
    python_type = SUBJECT_TABLES[subject_type].id.type.python_type
    if python_type is str:
        return text
    try:
        return python_type(text)
    except ValueError:
        raise ValueError(
            f"{subject_type} id {text!r} is not a valid {python_type.__name__}; "
            "pass the id as stored in the table"
        ) from None


def upsert_subject(
    session: Session,
    subject_type: str,
    subject_id: str,
    message_id: str,
    status: str,
    now: datetime,
) -> None:
    """Create the row or set its message id and status."""
    subject = SUBJECT_TABLES[subject_type]
    values: dict[str, Any] = {subject.message_id.key: message_id, subject.status.key: status}
    if subject.status_updated_at is not None:
        values[subject.status_updated_at.key] = now
    key = parse_subject_id(subject_type, subject_id)
    existing = session.scalar(select(subject.id).where(subject.id == key))
    if existing is None:
        session.execute(subject.table.insert().values({subject.id.key: key, **values}))
    else:
        session.execute(update(subject.table).where(subject.id == key).values(values))


def get_subject(session: Session, subject_type: str, subject_id: str) -> SubjectRow | None:
    subject = SUBJECT_TABLES[subject_type]
    key = parse_subject_id(subject_type, subject_id)
    row = session.execute(
        select(subject.id, subject.status, subject.message_id).where(subject.id == key)
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
