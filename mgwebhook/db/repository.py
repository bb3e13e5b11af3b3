"""Queries on mgwebhook's tables. Every function takes the caller's session and never commits.

The functions are synchronous so that a whole batch of events can run in one
worker-thread call on SQLite. Async callers run them through
`AsyncSession.run_sync`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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

    Building a statement with `.values()` for every batch costs more than
    running it; these take their values as execution parameters instead, one
    parameter set per row.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statements: dict[str, Any] = {
        "claim_tokens": insert(webhook_tokens)
        .on_conflict_do_nothing(index_elements=["token"])
        .returning(webhook_tokens.c.token),
        "token_fingerprints": select(webhook_tokens.c.token, webhook_tokens.c.fingerprint).where(
            webhook_tokens.c.token.in_(bindparam("tokens", expanding=True))
        ),
        "insert_events": webhook_events.insert().returning(
            webhook_events.c.id, webhook_events.c.token
        ),
        "insert_audits": insert(email_events)
        .on_conflict_do_nothing(index_elements=["subject_type", "subject_id", "mailgun_event_id"])
        .returning(email_events.c.id),
        "recorded_events": select(email_events.c.subject_id, email_events.c.mailgun_event_id).where(
            email_events.c.subject_type == bindparam("subject_type"),
            email_events.c.subject_id.in_(bindparam("subject_ids", expanding=True)),
            email_events.c.mailgun_event_id.in_(bindparam("event_keys", expanding=True)),
        ),
    }
    for subject in subjects:
        values: dict[str, Any] = {subject.status.key: bindparam("status_value")}
        if subject.status_updated_at is not None:
            values[subject.status_updated_at.key] = bindparam("updated_at_value")
        statements[f"set_status_{subject.kind}"] = (
            update(subject.table).where(subject.id == bindparam("subject_id_value")).values(values)
        )
        normalised = normalised_message_id(subject.message_id)
        statements[f"lock_{subject.kind}"] = (
            select(subject.id, subject.status, normalised)
            .where(normalised.in_(bindparam("message_ids", expanding=True)))
            .order_by(subject.id)
            .with_for_update()
        )
    return statements


def as_utc(value: datetime | None) -> datetime | None:
    """Return `value` as an aware UTC datetime; SQLite returns naive ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TokenUse:
    token: str
    fingerprint: str
    signed_at: datetime


def claim_tokens(session: Session, uses: list[TokenUse], now: datetime) -> dict[str, str | None]:
    """Store verified tokens; return, per token, the fingerprint it already had, or None if new.

    The tokens must be distinct. They are inserted in sorted order, so two
    transactions on PostgreSQL claiming the same tokens wait on each other in
    the same order instead of deadlocking. The primary key makes the claim hold
    across processes: a second transaction inserting the same token waits until
    the first one commits or rolls back, then finds its row or takes the token.
    A token whose row has gone by the time it is read back maps to "", which
    matches no fingerprint.
    """
    if not uses:
        return {}
    statements = _hot_statements(_dialect(session))
    connection = session.connection()
    ordered = sorted(uses, key=lambda use: use.token)
    parameters = [
        {
            "token": use.token,
            "fingerprint": use.fingerprint,
            "signed_at": use.signed_at,
            "received_at": now,
        }
        for use in ordered
    ]
    claimed = set(connection.execute(statements["claim_tokens"], parameters).scalars())
    already_used = [use.token for use in ordered if use.token not in claimed]
    stored: dict[str, str | None] = dict.fromkeys(claimed)
    if already_used:
        rows = connection.execute(statements["token_fingerprints"], {"tokens": already_used})
        found: dict[str, str] = {token: fingerprint for token, fingerprint in rows}
        stored.update({token: found.get(token, "") for token in already_used})
    return stored


def insert_webhook_events(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert received posts, each with a distinct token; return their ids by token."""
    if not rows:
        return {}
    statement = _hot_statements(_dialect(session))["insert_events"]
    result = session.connection().execute(statement, rows)
    return {token: int(event_id) for event_id, token in result}


def set_webhook_event_outcome(
    session: Session, event_id: int, outcome: str, detail: str | None, processed_at: datetime
) -> None:
    session.execute(
        update(webhook_events)
        .where(webhook_events.c.id == event_id)
        .values(outcome=outcome, detail=detail, processed_at=processed_at)
    )


def lock_subjects(session: Session, message_id: str) -> list[SubjectRow]:
    """Return the rows whose normalised message id matches, locked for update."""
    return lock_subjects_of(session, [message_id]).get(message_id, [])


def lock_subjects_of(session: Session, message_ids: Iterable[str]) -> dict[str, list[SubjectRow]]:
    """Return the rows matching each normalised message id, locked for update.

    Each subject table is read in one statement that locks its rows in id
    order, documents before tenants, so concurrent transactions on PostgreSQL
    lock shared rows in the same order. SQLite takes the write lock for the
    whole database at BEGIN IMMEDIATE instead.
    """
    requested = sorted(set(message_ids))
    found: dict[str, list[SubjectRow]] = {}
    if not requested:
        return found
    statements = _hot_statements(_dialect(session))
    connection = session.connection()
    for subject_type in SUBJECT_TABLES:
        result = connection.execute(statements[f"lock_{subject_type}"], {"message_ids": requested})
        for key, status, message_id in result:
            row = SubjectRow(subject_type, str(key), status, message_id, key=key)
            found.setdefault(message_id, []).append(row)
    return found


def recorded_events(
    session: Session, rows: Iterable[SubjectRow], event_keys: Iterable[str]
) -> set[tuple[str, str, str]]:
    """Return which of these Mailgun events the audit trail already has for these rows.

    The result holds (subject type, subject id, Mailgun event key) triples, a
    subset of the pairs of `rows` and `event_keys`.
    """
    keys = sorted(set(event_keys))
    ids_by_type: dict[str, set[str]] = {}
    for row in rows:
        ids_by_type.setdefault(row.subject_type, set()).add(row.subject_id)
    recorded: set[tuple[str, str, str]] = set()
    if not keys:
        return recorded
    statement = _hot_statements(_dialect(session))["recorded_events"]
    connection = session.connection()
    for subject_type, ids in ids_by_type.items():
        parameters = {"subject_type": subject_type, "subject_ids": sorted(ids), "event_keys": keys}
        for subject_id, event_key in connection.execute(statement, parameters):
            recorded.add((subject_type, subject_id, event_key))
    return recorded


def insert_audit_events(session: Session, rows: list[dict[str, Any]]) -> int:
    """Append audit events; return how many were new (a subject has each Mailgun event once)."""
    if not rows:
        return 0
    statement = _hot_statements(_dialect(session))["insert_audits"]
    return len(session.connection().execute(statement, rows).all())


def set_subject_statuses(
    session: Session, moves: Iterable[tuple[str, Any, str]], now: datetime
) -> None:
    """Set statuses, given (subject type, id as the database returns it, status) triples."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for subject_type, key, status in moves:
        values = {"subject_id_value": key, "status_value": status, "updated_at_value": now}
        by_type.setdefault(subject_type, []).append(values)
    statements = _hot_statements(_dialect(session))
    connection = session.connection()
    for subject_type, parameters in by_type.items():
        connection.execute(statements[f"set_status_{subject_type}"], parameters)


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
