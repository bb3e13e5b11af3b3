"""Set-based statements of the ingest path: one statement per table and step for a whole batch.

Every function takes the caller's session and never commits. The statements
are built once per dialect and take their rows as execution parameters:

- SQLite gets one parameter set per row (SQLAlchemy sends a multi-row INSERT
  or an executemany) and `IN` lists.
- PostgreSQL gets one array per column, unpacked with `unnest`, and `= ANY`.
  The SQL text is then the same whatever the batch size, so asyncpg prepares
  each statement once per connection instead of once per batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Table,
    and_,
    any_,
    bindparam,
    column,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from mgwebhook.db.schema import (
    SUBJECT_TABLES,
    SubjectTable,
    email_events,
    normalised_message_id,
    webhook_events,
    webhook_tokens,
)

TOKEN_COLUMNS = ("token", "fingerprint", "signed_at", "received_at")
EVENT_COLUMNS = tuple(c.key for c in webhook_events.columns if c.key != "id")
AUDIT_COLUMNS = tuple(c.key for c in email_events.columns if c.key != "id")


@dataclass(frozen=True)
class SubjectRow:
    subject_type: str
    subject_id: str
    email_status: str | None
    email_message_id: str | None = None
    # The id as the database returns it (text, integer or UUID); subject_id is its text.
    key: Any = None


@dataclass(frozen=True)
class TokenUse:
    token: str
    fingerprint: str
    signed_at: datetime


def claim_tokens(session: Session, uses: list[TokenUse], now: datetime) -> dict[str, str | None]:
    """Store verified tokens and return, per token, the fingerprint stored before, or None if new.

    The tokens must be distinct. They are inserted in sorted order, so two
    transactions on PostgreSQL claiming the same tokens wait on each other in
    the same order instead of deadlocking. The primary key makes the claim hold
    across processes: a second transaction inserting the same token waits until
    the first one commits or rolls back, then finds its row or takes the token.
    A token whose row is gone by the time it is read back maps to "", which
    matches no fingerprint.
    """
    if not uses:
        return {}
    dialect, statements = _statements(session)
    connection = session.connection()
    rows: list[dict[str, Any]] = [
        {
            "token": use.token,
            "fingerprint": use.fingerprint,
            "signed_at": use.signed_at,
            "received_at": now,
        }
        for use in sorted(uses, key=lambda use: use.token)
    ]
    parameters = _bulk(dialect, rows, TOKEN_COLUMNS)
    claimed = set(connection.execute(statements["claim_tokens"], parameters).scalars())
    already_used: list[str] = [row["token"] for row in rows if row["token"] not in claimed]
    stored: dict[str, str | None] = dict.fromkeys(claimed)
    if already_used:
        result = connection.execute(statements["token_fingerprints"], {"tokens": already_used})
        found: dict[str, str] = {token: fingerprint for token, fingerprint in result}
        stored.update({token: found.get(token, "") for token in already_used})
    return stored


def insert_webhook_events(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert received posts, each with a distinct token, and return their ids by token."""
    if not rows:
        return {}
    dialect, statements = _statements(session)
    parameters = _bulk(dialect, rows, EVENT_COLUMNS)
    result = session.connection().execute(statements["insert_events"], parameters)
    return {token: int(event_id) for event_id, token in result}


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
    _, statements = _statements(session)
    connection = session.connection()
    for subject_type in SUBJECT_TABLES:
        result = connection.execute(statements[f"lock_{subject_type}"], {"message_ids": requested})
        for key, status, message_id in result:
            row = SubjectRow(subject_type, str(key), status, message_id, key=key)
            found.setdefault(message_id, []).append(row)
    return found


def lock_rows_only(session: Session, message_ids: Iterable[str]) -> None:
    """Lock the rows matching these normalised message ids without reading them.

    This takes the locks of `lock_subjects_of` in the same order, ahead of work
    that reads the rows later. On SQLite, BEGIN IMMEDIATE has already locked
    the whole database, so nothing is sent.
    """
    requested = sorted(set(message_ids))
    dialect, statements = _statements(session)
    if not requested or dialect != "postgresql":
        return
    connection = session.connection()
    for subject_type in SUBJECT_TABLES:
        connection.execute(statements[f"lock_only_{subject_type}"], {"message_ids": requested})


def recorded_events(
    session: Session, candidates: Iterable[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """Return the candidates already in the audit trail.

    Each candidate is a (subject type, subject id, Mailgun event key) triple,
    looked up on the unique index of the audit trail.
    """
    triples = sorted(set(candidates))
    if not triples:
        return set()
    dialect, statements = _statements(session)
    connection = session.connection()
    if dialect == "postgresql":
        parameters = {
            "subject_type_values": [triple[0] for triple in triples],
            "subject_id_values": [triple[1] for triple in triples],
            "event_key_values": [triple[2] for triple in triples],
        }
        return {tuple(row) for row in connection.execute(statements["recorded_events"], parameters)}
    # SQLite reads, per subject type, every pair of these ids and keys on the
    # unique index, and the pairs that are not candidates are dropped here.
    requested = set(triples)
    found = set()
    for subject_type in sorted({triple[0] for triple in triples}):
        lists: dict[str, Any] = {
            "subject_type": subject_type,
            "subject_ids": sorted({t[1] for t in triples if t[0] == subject_type}),
            "event_keys": sorted({t[2] for t in triples if t[0] == subject_type}),
        }
        for subject_id, key in connection.execute(statements["recorded_events"], lists):
            found.add((subject_type, subject_id, key))
    return found & requested


def insert_audit_events(session: Session, rows: list[dict[str, Any]]) -> int:
    """Append audit events and return how many were new (a subject has each Mailgun event once)."""
    if not rows:
        return 0
    dialect, statements = _statements(session)
    parameters = _bulk(dialect, rows, AUDIT_COLUMNS)
    return len(session.connection().execute(statements["insert_audits"], parameters).all())


def set_subject_statuses(
    session: Session, moves: Iterable[tuple[str, Any, str]], now: datetime
) -> None:
    """Set statuses, given (subject type, id as the database returns it, status) triples."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for subject_type, key, status in moves:
        row = {"subject_key": key, "new_status": status, "updated_at": now}
        by_type.setdefault(subject_type, []).append(row)
    dialect, statements = _statements(session)
    connection = session.connection()
    for subject_type, rows in by_type.items():
        statement = statements[f"set_status_{subject_type}"]
        if dialect == "postgresql":
            parameters: Any = _bulk(dialect, rows, ("subject_key", "new_status"))
            parameters["updated_at"] = now
        else:
            parameters = rows
        connection.execute(statement, parameters)


def _bulk(dialect: str, rows: list[dict[str, Any]], columns: Iterable[str]) -> Any:
    """Shape rows as execution parameters: a list of rows, or one array per column."""
    if dialect != "postgresql":
        return rows
    return {f"{name}_values": [row[name] for row in rows] for name in columns}


def _statements(session: Session) -> tuple[str, dict[str, Any]]:
    dialect = session.get_bind().dialect.name
    subjects = tuple(SUBJECT_TABLES.values())
    if dialect == "postgresql":
        return dialect, _postgresql_statements(subjects)
    return dialect, _sqlite_statements(subjects)


@functools.cache
def _sqlite_statements(subjects: tuple[SubjectTable, ...]) -> dict[str, Any]:
    statements: dict[str, Any] = {
        "claim_tokens": sqlite.insert(webhook_tokens)
        .on_conflict_do_nothing(index_elements=["token"])
        .returning(webhook_tokens.c.token),
        "token_fingerprints": select(webhook_tokens.c.token, webhook_tokens.c.fingerprint).where(
            webhook_tokens.c.token.in_(bindparam("tokens", expanding=True))
        ),
        "insert_events": webhook_events.insert().returning(
            webhook_events.c.id, webhook_events.c.token
        ),
        "insert_audits": sqlite.insert(email_events)
        .on_conflict_do_nothing(index_elements=["subject_type", "subject_id", "mailgun_event_id"])
        .returning(email_events.c.id),
        "recorded_events": select(email_events.c.subject_id, email_events.c.mailgun_event_id).where(
            email_events.c.subject_type == bindparam("subject_type"),
            email_events.c.subject_id.in_(bindparam("subject_ids", expanding=True)),
            email_events.c.mailgun_event_id.in_(bindparam("event_keys", expanding=True)),
        ),
    }
    for subject in subjects:
        values: dict[str, Any] = {subject.status.key: bindparam("new_status")}
        if subject.status_updated_at is not None:
            values[subject.status_updated_at.key] = bindparam("updated_at")
        statements[f"set_status_{subject.kind}"] = (
            update(subject.table).where(subject.id == bindparam("subject_key")).values(values)
        )
        normalised = normalised_message_id(subject.message_id)
        statements[f"lock_{subject.kind}"] = (
            select(subject.id, subject.status, normalised)
            .where(normalised.in_(bindparam("message_ids", expanding=True)))
            .order_by(subject.id)
        )
    return statements


@functools.cache
def _postgresql_statements(subjects: tuple[SubjectTable, ...]) -> dict[str, Any]:
    tokens = _unnest(webhook_tokens, TOKEN_COLUMNS)
    token_rows = select(*tokens.c).order_by(tokens.c.token)
    audit_keys = _unnest(email_events, ("subject_type", "subject_id"), event_key="mailgun_event_id")
    statements: dict[str, Any] = {
        "claim_tokens": postgresql.insert(webhook_tokens)
        .from_select(list(TOKEN_COLUMNS), token_rows)
        .on_conflict_do_nothing(index_elements=["token"])
        .returning(webhook_tokens.c.token),
        "token_fingerprints": select(webhook_tokens.c.token, webhook_tokens.c.fingerprint).where(
            webhook_tokens.c.token == any_(_array_parameter("tokens", webhook_tokens.c.token))
        ),
        "insert_events": postgresql.insert(webhook_events)
        .from_select(list(EVENT_COLUMNS), select(*_unnest(webhook_events, EVENT_COLUMNS).c))
        .returning(webhook_events.c.id, webhook_events.c.token),
        "insert_audits": postgresql.insert(email_events)
        .from_select(list(AUDIT_COLUMNS), select(*_unnest(email_events, AUDIT_COLUMNS).c))
        .on_conflict_do_nothing(index_elements=["subject_type", "subject_id", "mailgun_event_id"])
        .returning(email_events.c.id),
        "recorded_events": select(*_audit_key_columns()).join(
            audit_keys,
            and_(
                email_events.c.subject_type == audit_keys.c.subject_type,
                email_events.c.subject_id == audit_keys.c.subject_id,
                email_events.c.mailgun_event_id == audit_keys.c.event_key,
            ),
        ),
    }
    for subject in subjects:
        moves = (
            func.unnest(
                _array_parameter("subject_key_values", subject.id),
                _array_parameter("new_status_values", subject.status),
            )
            .table_valued(column("subject_key"), column("new_status"))
            .render_derived()
        )
        values: dict[str, Any] = {subject.status.key: moves.c.new_status}
        if subject.status_updated_at is not None:
            values[subject.status_updated_at.key] = bindparam(
                "updated_at", type_=subject.status_updated_at.type
            )
        statements[f"set_status_{subject.kind}"] = (
            update(subject.table).where(subject.id == moves.c.subject_key).values(values)
        )
        normalised = normalised_message_id(subject.message_id)
        matching = normalised == any_(_array_parameter("message_ids", subject.message_id))
        statements[f"lock_{subject.kind}"] = (
            select(subject.id, subject.status, normalised)
            .where(matching)
            .order_by(subject.id)
            .with_for_update()
        )
        statements[f"lock_only_{subject.kind}"] = (
            select(literal(1))
            .select_from(subject.table)
            .where(matching)
            .order_by(subject.id)
            .with_for_update()
        )
    return statements


def _audit_key_columns() -> list[Column[Any]]:
    return [email_events.c.subject_type, email_events.c.subject_id, email_events.c.mailgun_event_id]


def _array_parameter(name: str, like: Column[Any]) -> Any:
    """Return a bind parameter for an array of values of the column's type."""
    return bindparam(name, type_=postgresql.ARRAY(like.type))


def _unnest(table: Table, columns: Iterable[str], **renamed: str) -> FromClause:
    """Return `unnest` of one array parameter per column, as a table with those columns.

    `renamed` adds columns under another name: name=column of `table`.
    """
    names = {name: name for name in columns} | {name: source for name, source in renamed.items()}
    arrays = [_array_parameter(f"{name}_values", table.c[source]) for name, source in names.items()]
    return (
        func.unnest(*arrays)
        .table_valued(*[column(name, table.c[source].type) for name, source in names.items()])
        .render_derived()
    )
