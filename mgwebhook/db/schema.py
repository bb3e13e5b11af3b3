"""Tables: the subject tables shared with the invoicing API, and mgwebhook's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from mgwebhook.payloads import MESSAGE_ID_STRIP

metadata = MetaData()

# The Alembic revision that the tables below match, kept in VERSION_TABLE so
# that an invoicing API using Alembic on the same database keeps its own
# `alembic_version`. A test checks it against the newest migration.
SCHEMA_REVISION = "0003"
VERSION_TABLE = "mgwebhook_alembic_version"

# SQLite only makes an INTEGER PRIMARY KEY an auto-incrementing row id.
Identifier = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)


class normalised_message_id(FunctionElement[str]):  # noqa: N801 - reads as an SQL function
    """SQL expression: a message id with angle brackets and surrounding whitespace removed.

    The invoicing API stores the id as the send API returned it, in angle brackets,
    so lookups compare this expression, which has an index of its own.
    """

    type: TypeEngine[Any] = Text()
    inherit_cache = True
    name = "normalised_message_id"


def _strip_literal() -> str:
    return "'" + MESSAGE_ID_STRIP.replace("'", "''") + "'"


@compiles(normalised_message_id)
def _compile_default(element: normalised_message_id, compiler: Any, **kw: Any) -> str:
    return f"trim({compiler.process(element.clauses, **kw)}, {_strip_literal()})"


@compiles(normalised_message_id, "postgresql")
def _compile_postgresql(element: normalised_message_id, compiler: Any, **kw: Any) -> str:
    return f"btrim({compiler.process(element.clauses, **kw)}, {_strip_literal()})"


@dataclass(frozen=True, eq=False)
class SubjectTable:
    """A table whose rows carry a Mailgun message id and an email status.

    The columns are looked up by role, so the invoicing API's own tables can be
    mapped with other table and column names.
    """

    kind: str
    table: Table
    id: Column[Any]
    message_id: Column[Any]
    status: Column[Any]
    status_updated_at: Column[Any] | None
    # False when the table belongs to another application: mgwebhook then never
    # creates or alters it.
    managed: bool = True


# NOTE: On SQLite, `record_sent_email` (which `track` runs), `history` and
# `events list --subject` find a "uuid" id stored as 32 hex digits or as dashed
# text, all in lower or all in upper case (`subject_ids.uuid_spellings`). They
# miss other spellings, such as mixed case, and `track` then inserts a second
# row for that UUID. Webhooks find such a row by its message id and update it.
_ID_TYPES: dict[str, TypeEngine[Any]] = {
    "text": String(255),
    "integer": BigInteger(),
    "uuid": Uuid(as_uuid=False),
}

# The subject tables live apart from mgwebhook's own tables: they are created
# only when mgwebhook manages them.
subject_metadata = MetaData()


def subject_table(
    kind: str,
    name: str,
    *,
    id_column: str = "id",
    id_type: str = "text",
    message_id_column: str = "email_message_id",
    status_column: str = "email_status",
    status_updated_at_column: str | None = "email_status_updated_at",
    managed: bool = True,
    target: MetaData | None = None,
) -> SubjectTable:
    """Describe a subject table; a managed one gets mgwebhook's column types and index."""
    schema, _, table_name = name.rpartition(".")
    columns: list[Column[Any]] = [
        Column(id_column, _ID_TYPES[id_type], primary_key=True),
        Column(message_id_column, Text),
        Column(status_column, String(32)),
    ]
    if status_updated_at_column:
        columns.append(Column(status_updated_at_column, Timestamp))
    table = Table(
        table_name,
        target if target is not None else subject_metadata,
        *columns,
        schema=schema or None,
    )
    if managed:
        Index(
            f"ix_{table_name}_message_id",
            normalised_message_id(table.c[message_id_column]),
        )
    return SubjectTable(
        kind=kind,
        table=table,
        id=table.c[id_column],
        message_id=table.c[message_id_column],
        status=table.c[status_column],
        status_updated_at=table.c[status_updated_at_column] if status_updated_at_column else None,
        managed=managed,
    )


_default_document = subject_table("document", "documents")
_default_tenant = subject_table("tenant", "tenants")
documents = _default_document.table
tenants = _default_tenant.table

# The subject tables in use, by kind. `mgwebhook.db.subjects.configure_subjects`
# replaces the entries when the configuration maps other tables.
SUBJECT_TABLES: dict[str, SubjectTable] = {"document": _default_document, "tenant": _default_tenant}
DEFAULT_SUBJECT_TABLES = dict(SUBJECT_TABLES)


# Every authentic token, kept at least as long as its timestamp is accepted, so a
# captured signature block cannot be attached to a forged body.
webhook_tokens = Table(
    "webhook_tokens",
    metadata,
    Column("token", Text, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("signed_at", Timestamp, nullable=False),
    Column("received_at", Timestamp, nullable=False),
    Index("ix_webhook_tokens_received_at", "received_at"),
)

# Received posts: the raw payload, its normalised fields and what became of it.
webhook_events = Table(
    "webhook_events",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("received_at", Timestamp, nullable=False),
    Column("token", Text, nullable=False),
    Column("payload_format", String(8), nullable=False),
    Column("raw_payload", Text, nullable=False),
    Column("event", Text),
    Column("mailgun_event_id", Text),
    Column("message_id", Text),
    Column("recipient", Text),
    Column("severity", Text),
    Column("reason", Text),
    Column("delivery_code", Integer),
    Column("occurred_at", Timestamp),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Column("processed_at", Timestamp),
    Index("ix_webhook_events_received_at", "received_at"),
    Index("ix_webhook_events_outcome_id", "outcome", "id"),
    Index("ix_webhook_events_message_id", "message_id"),
)

# The audit trail. One Mailgun event is recorded once per subject row, whichever
# token or process delivered it.
email_events = Table(
    "email_events",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("subject_type", String(16), nullable=False),
    Column("subject_id", String(255), nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("mailgun_event", Text, nullable=False),
    Column("mailgun_event_id", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("occurred_at", Timestamp, nullable=False),
    Column("recipient", Text),
    Column("severity", Text),
    Column("reason", Text),
    Column("delivery_code", Integer),
    Column("status_before", Text),
    Column("status_after", Text),
    Column("status_changed", Boolean, nullable=False),
    Column("webhook_event_id", Identifier, ForeignKey("webhook_events.id"), nullable=True),
    Column("created_at", Timestamp, nullable=False),
    UniqueConstraint(
        "subject_type", "subject_id", "mailgun_event_id", name="uq_email_events_subject_event"
    ),
    Index("ix_email_events_message_id", "message_id"),
    Index("ix_email_events_webhook_event_id", "webhook_event_id"),
)
