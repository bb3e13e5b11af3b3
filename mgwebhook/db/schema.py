"""Tables: the subject tables shared with the invoicing API, and mgwebhook's own."""

from __future__ import annotations

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
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeEngine

from mgwebhook.payloads import MESSAGE_ID_STRIP

metadata = MetaData()

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


def _subject_table(name: str) -> Table:
    table = Table(
        name,
        metadata,
        Column("id", String(255), primary_key=True),
        Column("email_message_id", Text),
        Column("email_status", String(32)),
        Column("email_status_updated_at", Timestamp),
    )
    Index(f"ix_{name}_message_id", normalised_message_id(table.c.email_message_id))
    return table


documents = _subject_table("documents")
tenants = _subject_table("tenants")

SUBJECT_TABLES = {"document": documents, "tenant": tenants}

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
    Index("ix_webhook_events_outcome_received_at", "outcome", "received_at"),
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
