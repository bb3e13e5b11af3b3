"""Set-based statements of the ingest path: one statement per table and step for a whole batch.

Every function takes the caller's session and never commits. The statements
are compiled once and run on the session's driver connection
(`mgwebhook.db.driver`), with the rows as parameters:

- SQLite gets multi-row INSERTs and `IN` lists, with one placeholder per
  value, and an executemany for the status updates.
- PostgreSQL gets one array per column, unpacked with `unnest`, and `= ANY`.
  The SQL text is then the same whatever the batch size, so asyncpg prepares
  each statement once per connection instead of once per batch size.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Dialect,
    String,
    Table,
    and_,
    any_,
    bindparam,
    column,
    func,
    literal_column,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import FromClause

from mgwebhook.db.driver import DriverStatement
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
# The audit trail has each Mailgun event once per subject.
AUDIT_KEY = ("subject_type", "subject_id", "mailgun_event_id")


@dataclass(frozen=True)
class SubjectRow:
    subject_type: str
    subject_id: str
    email_status: str | None
    email_message_id: str | None = None
    # The id as the database returns it (text, integer or UUID; on SQLite the
    # stored text itself), for updating the row. subject_id is its text.
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
    rows: list[dict[str, Any]] = [
        {
            "token": use.token,
            "fingerprint": use.fingerprint,
            "signed_at": use.signed_at,
            "received_at": now,
        }
        for use in sorted(uses, key=lambda use: use.token)
    ]
    if dialect == "postgresql":
        parameters = _arrays(rows, TOKEN_COLUMNS)
        claimed = {token for (token,) in statements["claim_tokens"].fetch(session, parameters)}
    else:
        claimed = {token for (token,) in _sqlite_insert(session, "claim_tokens", rows)}
    already_used: list[str] = [row["token"] for row in rows if row["token"] not in claimed]
    stored: dict[str, str | None] = dict.fromkeys(claimed)
    if already_used:
        found: dict[str, str]
        if dialect == "postgresql":
            parameters = {"tokens": already_used}
            found = dict(statements["token_fingerprints"].fetch(session, parameters))
        else:
            found = dict(_sqlite_lookup(session, "token_fingerprints", "token", already_used))
        stored.update({token: found.get(token, "") for token in already_used})
    return stored


def insert_webhook_events(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert received posts, each with a distinct token, and return their ids by token."""
    if not rows:
        return {}
    dialect, statements = _statements(session)
    if dialect == "postgresql":
        parameters = _arrays(rows, EVENT_COLUMNS)
        result = statements["insert_events"].fetch(session, parameters)
    else:
        result = _sqlite_insert(session, "insert_events", rows)
    return {token: int(event_id) for event_id, token in result}


def lock_subjects(session: Session, message_id: str) -> list[SubjectRow]:
    """Return the rows whose normalised message id matches, locked for update."""
    return lock_subjects_of(session, [message_id]).get(message_id, [])


def lock_subjects_of(session: Session, message_ids: Iterable[str]) -> dict[str, list[SubjectRow]]:
    """Return the rows matching each normalised message id, locked for update.

    On PostgreSQL each subject table is read in one statement that locks its
    rows in id order, documents before tenants, so concurrent transactions
    lock shared rows in the same order. SQLite takes the write lock for the
    whole database at BEGIN IMMEDIATE instead, and reads up to 128 message ids
    per statement.
    """
    requested = sorted(set(message_ids))
    found: dict[str, list[SubjectRow]] = {}
    if not requested:
        return found
    dialect, statements = _statements(session)
    for subject_type in SUBJECT_TABLES:
        name = f"lock_{subject_type}"
        if dialect == "postgresql":
            rows = statements[name].fetch(session, {"message_ids": requested})
        else:
            rows = _sqlite_lookup(session, name, "message_id", requested)
        for key, status, message_id, *stored in rows:
            # SQLite also returns the id as stored, which the status update
            # matches exactly, whatever the spelling of a UUID.
            stored_key = stored[0] if stored else key
            row = SubjectRow(subject_type, str(key), status, message_id, key=stored_key)
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
    for subject_type in SUBJECT_TABLES:
        statements[f"lock_only_{subject_type}"].fetch(session, {"message_ids": requested})


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
    if dialect == "postgresql":
        parameters = {
            "subject_type_values": [triple[0] for triple in triples],
            "subject_id_values": [triple[1] for triple in triples],
            "event_key_values": [triple[2] for triple in triples],
        }
        return {tuple(row) for row in statements["recorded_events"].fetch(session, parameters)}
    # SQLite reads, per subject type, every pair of these ids and keys on the
    # unique index, and the pairs that are not candidates are dropped here.
    requested = set(triples)
    found = set()
    for subject_type in sorted({triple[0] for triple in triples}):
        subject_ids = sorted({t[1] for t in triples if t[0] == subject_type})
        event_keys = sorted({t[2] for t in triples if t[0] == subject_type})
        for ids in _in_lists(subject_ids):
            for keys in _in_lists(event_keys):
                statement = _sqlite_recorded_events(len(ids), len(keys))
                named = {
                    "subject_type": subject_type,
                    **_listed("subject_id", ids),
                    **_listed("event_key", keys),
                }
                for subject_id, key in statement.fetch(session, named):
                    found.add((subject_type, subject_id, key))
    return found & requested


def insert_audit_events(session: Session, rows: list[dict[str, Any]]) -> int:
    """Append audit events and return how many were new (a subject has each Mailgun event once)."""
    if not rows:
        return 0
    dialect, statements = _statements(session)
    if dialect == "postgresql":
        parameters = _arrays(rows, AUDIT_COLUMNS)
        return len(statements["insert_audits"].fetch(session, parameters))
    return len(_sqlite_insert(session, "insert_audits", rows))


def set_subject_statuses(
    session: Session, moves: Iterable[tuple[str, Any, str]], now: datetime
) -> None:
    """Set statuses, given (subject type, id as the database returns it, status) triples."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for subject_type, key, status in moves:
        row = {"subject_key": key, "new_status": status, "updated_at": now}
        by_type.setdefault(subject_type, []).append(row)
    dialect, statements = _statements(session)
    for subject_type, rows in by_type.items():
        statement = statements[f"set_status_{subject_type}"]
        if dialect != "postgresql":
            statement.run_many(session, rows)
            continue
        parameters = _arrays(rows, ("subject_key", "new_status"))
        parameters["updated_at"] = now
        statement.fetch(session, parameters)


def _arrays(rows: list[dict[str, Any]], columns: Iterable[str]) -> dict[str, Any]:
    """Shape rows as PostgreSQL parameters: one array per column, named column_values."""
    return {f"{name}_values": [row[name] for row in rows] for name in columns}


def _subjects() -> tuple[SubjectTable, ...]:
    return tuple(SUBJECT_TABLES.values())


def _statements(session: Session) -> tuple[str, dict[str, DriverStatement]]:
    """Return the session's dialect name and its statements of fixed text."""
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        return dialect.name, _postgresql_statements(_subjects(), dialect)
    return dialect.name, _sqlite_statements(_subjects())


# SQLite statements run on the driver's connection (see `mgwebhook.db.driver`).
# A list of values or rows gets one placeholder per value, so each statement is
# compiled once per length. With such an `IN` list, SQLite finds the rows by
# the message id index (as EXPLAIN QUERY PLAN shows), which a JSON array
# parameter read with json_each did not always do.
#
# Only the lengths in CHUNK_SIZES are compiled, which bounds the memory of the
# cached statements (one per length of 1 to 200 rows took about 60 MB for the
# events insert alone). Longer lists of rows are split into several
# statements, and an `IN` list is padded by repeating its last value.
_SQLITE = sqlite.dialect()
_SQLITE_CACHE_SIZE = 512
CHUNK_SIZES = (*range(1, 17), 32, 64, 128)


def _chunks(values: list[Any]) -> Iterator[list[Any]]:
    """Split values into consecutive lists whose lengths are in CHUNK_SIZES."""
    start = 0
    while start < len(values):
        size = max(size for size in CHUNK_SIZES if size <= len(values) - start)
        yield values[start : start + size]
        start += size


def _in_lists(values: list[Any]) -> Iterator[list[Any]]:
    """Split values into `IN` lists, each padded to a length in CHUNK_SIZES."""
    largest = CHUNK_SIZES[-1]
    for start in range(0, len(values), largest):
        part = values[start : start + largest]
        size = min(size for size in CHUNK_SIZES if size >= len(part))
        yield part + [part[-1]] * (size - len(part))


def _sqlite_insert(session: Session, name: str, rows: list[dict[str, Any]]) -> list[Any]:
    """Insert the rows with the named statement and return the rows it returns."""
    returned: list[Any] = []
    for chunk in _chunks(rows):
        returned += _sqlite_rows(name, len(chunk)).fetch(session, _numbered(chunk))
    return returned


def _sqlite_lookup(session: Session, name: str, list_name: str, values: list[Any]) -> list[Any]:
    """Run the named lookup by a list of values and return its rows."""
    found: list[Any] = []
    for values_in in _in_lists(values):
        found += _sqlite_list(name, len(values_in)).fetch(session, _listed(list_name, values_in))
    return found


ROW_STATEMENTS = {
    "claim_tokens": (webhook_tokens, TOKEN_COLUMNS),
    "insert_events": (webhook_events, EVENT_COLUMNS),
    "insert_audits": (email_events, AUDIT_COLUMNS),
}


def _numbered(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Name each value of several rows as `_sqlite_rows` numbers its placeholders."""
    return {
        f"{name}_{index}": value for index, row in enumerate(rows) for name, value in row.items()
    }


def _listed(name: str, values: Iterable[Any]) -> dict[str, Any]:
    """Name each value of a list as `_in_list` numbers its placeholders."""
    return {f"{name}_{index}": value for index, value in enumerate(values)}


def _in_list(name: str, count: int, like: Any) -> list[Any]:
    return [bindparam(f"{name}_{index}", type_=like.type) for index in range(count)]


# A type that SQLite's dialect converts in neither direction: values pass as
# the driver reads and writes them.
_STORED = String()


def _as_stored(column: Column[Any]) -> Any:
    """Return the column as SQLite stores it, without its type's conversion."""
    return type_coerce(column, _STORED).label(f"stored_{column.key}")


@functools.lru_cache(maxsize=_SQLITE_CACHE_SIZE)
def _sqlite_rows(name: str, count: int) -> DriverStatement:
    """Return an insert of `count` rows, with placeholders named column_row."""
    table, columns = ROW_STATEMENTS[name]
    rows = [
        {column: bindparam(f"{column}_{index}", type_=table.c[column].type) for column in columns}
        for index in range(count)
    ]
    statement: Any
    if name == "claim_tokens":
        statement = (
            sqlite.insert(table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["token"])
            .returning(table.c.token)
        )
    elif name == "insert_events":
        statement = table.insert().values(rows).returning(table.c.id, table.c.token)
    else:
        statement = (
            sqlite.insert(table)
            .values(rows)
            .on_conflict_do_nothing(index_elements=list(AUDIT_KEY))
            .returning(table.c.id)
        )
    return DriverStatement.compile(statement, _SQLITE)


def _sqlite_list(name: str, count: int) -> DriverStatement:
    """Return a lookup by a list of `count` values."""
    return _sqlite_list_for(_subjects(), name, count)


@functools.lru_cache(maxsize=_SQLITE_CACHE_SIZE)
def _sqlite_list_for(subjects: tuple[SubjectTable, ...], name: str, count: int) -> DriverStatement:
    statement: Any
    if name == "token_fingerprints":
        tokens = webhook_tokens.c.token
        statement = select(tokens, webhook_tokens.c.fingerprint).where(
            tokens.in_(_in_list("token", count, tokens))
        )
    else:
        [subject] = [subject for subject in subjects if name == f"lock_{subject.kind}"]
        normalised = normalised_message_id(subject.message_id)
        statement = (
            select(subject.id, subject.status, normalised, _as_stored(subject.id))
            .where(normalised.in_(_in_list("message_id", count, normalised)))
            .order_by(subject.id)
        )
    return DriverStatement.compile(statement, _SQLITE)


@functools.lru_cache(maxsize=_SQLITE_CACHE_SIZE)
def _sqlite_recorded_events(ids: int, keys: int) -> DriverStatement:
    """Return the lookup of audit rows of one subject type by `ids` ids and `keys` event keys."""
    subject_id, event_key = email_events.c.subject_id, email_events.c.mailgun_event_id
    statement = select(subject_id, event_key).where(
        email_events.c.subject_type == bindparam("subject_type"),
        subject_id.in_(_in_list("subject_id", ids, subject_id)),
        event_key.in_(_in_list("event_key", keys, event_key)),
    )
    return DriverStatement.compile(statement, _SQLITE)


@functools.cache
def _sqlite_statements(subjects: tuple[SubjectTable, ...]) -> dict[str, DriverStatement]:
    statements = {}
    for subject in subjects:
        values: dict[str, Any] = {subject.status.key: bindparam("new_status")}
        if subject.status_updated_at is not None:
            values[subject.status_updated_at.key] = bindparam("updated_at")
        stored_key = bindparam("subject_key", type_=_STORED)
        statement = update(subject.table).where(subject.id == stored_key).values(values)
        statements[f"set_status_{subject.kind}"] = DriverStatement.compile(statement, _SQLITE)
    return statements


@functools.lru_cache(maxsize=16)
def _postgresql_statements(
    subjects: tuple[SubjectTable, ...], dialect: Dialect
) -> dict[str, DriverStatement]:
    """Return the PostgreSQL statements compiled for the engine's dialect (its driver)."""
    return {
        name: DriverStatement.compile(statement, dialect)
        for name, statement in _postgresql_clauses(subjects).items()
    }


def _postgresql_clauses(subjects: tuple[SubjectTable, ...]) -> dict[str, Any]:
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
        .on_conflict_do_nothing(index_elements=list(AUDIT_KEY))
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
            select(literal_column("1"))
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
