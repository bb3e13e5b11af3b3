"""Recording that an email was sent for a document or tenant.

The invoicing API can call `record_sent_email` inside its own transaction right
after Mailgun accepts a message; `mgwebhook track` does the same from a shell.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from mgwebhook import ingest
from mgwebhook.db import repository
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors
from mgwebhook.db.schema import SUBJECT_TABLES
from mgwebhook.db.subject_ids import parse_subject_id
from mgwebhook.payloads import normalise_message_id
from mgwebhook.statuses import EmailStatus

SUBJECT_TYPES = tuple(SUBJECT_TABLES)


@dataclass(frozen=True)
class TrackResult:
    subject_type: str
    # The id as the table returns it, so a UUID is dashed and lower case.
    subject_id: str
    message_id: str
    status: str | None
    # Stored events that had arrived before the row and were applied now.
    applied_events: list[int]


async def record_sent_email(
    session: AsyncSession,
    subject_type: str,
    subject_id: str,
    message_id: str,
    now: datetime | None = None,
) -> TrackResult:
    """Store the normalised message id on the row with status SENT, creating the row if needed.

    A row that already has this message id keeps its status. Events for this
    message id that arrived before the row was tracked are applied in the same
    transaction. The caller commits. Raises ValueError, naming the value, for an
    unknown subject type, an id that does not fit the table's id type or an
    empty message id.
    """
    return await session.run_sync(record_sent_email_sync, subject_type, subject_id, message_id, now)


def record_sent_email_sync(
    session: Session,
    subject_type: str,
    subject_id: str,
    message_id: str,
    now: datetime | None = None,
) -> TrackResult:
    """Synchronous body of `record_sent_email`, for callers with a `Session`."""
    if subject_type not in SUBJECT_TABLES:
        raise ValueError(
            f"subject type {subject_type!r} is invalid; use one of {', '.join(SUBJECT_TYPES)}"
        )
    if not subject_id.strip():
        raise ValueError("subject id is empty; pass the document or tenant id")
    key = parse_subject_id(SUBJECT_TABLES[subject_type], subject_id)
    normalised = normalise_message_id(message_id)
    if normalised is None:
        raise ValueError(f"message id {message_id!r} is empty once angle brackets are removed")

    now = now or ingest.utc_now()
    existing = repository.get_subject(session, subject_type, key)
    # Tracking the same message again keeps the status its events gave it.
    if existing is None or normalise_message_id(existing.email_message_id) != normalised:
        repository.upsert_subject(session, subject_type, key, normalised, EmailStatus.SENT, now)
    applied = []
    for event_id in repository.unmatched_event_ids(session, normalised):
        result = ingest.reprocess_stored_event_sync(session, event_id, now)
        if result.outcome is ingest.Outcome.APPLIED:
            applied.append(event_id)
    row = repository.get_subject(session, subject_type, key)
    if row is None:
        return TrackResult(subject_type, str(key), normalised, None, applied)
    return TrackResult(subject_type, row.subject_id, normalised, row.email_status, applied)


async def track_email(
    engine: AsyncEngine, subject_type: str, subject_id: str, message_id: str
) -> TrackResult:
    """Run `record_sent_email` in a transaction of its own and commit it."""
    async with translate_errors(), session_factory(engine)() as session, session.begin():
        return await record_sent_email(session, subject_type, subject_id, message_id)
