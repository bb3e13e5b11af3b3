"""The ingest transaction: replay guard, lookup, status rules and audit trail.

The live endpoint and replay both run through here. The caller owns the
session and commits once this returns, so the token, the stored event, the
audit events and the status changes become durable together or not at all.

The work is synchronous code on a `Session`. The endpoint runs a batch of
events in one call (`ingest_batch`); async callers use the wrappers that go
through `AsyncSession.run_sync`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from mgwebhook import statuses
from mgwebhook.db import repository
from mgwebhook.db.errors import DATABASE_ERRORS, describe
from mgwebhook.db.repository import TokenClaim
from mgwebhook.errors import DatabaseUnavailable, MalformedPayload, TokenReplayed, UnusableEvent
from mgwebhook.payloads import MailgunEvent, Payload, extract_event, parse_stored

logger = logging.getLogger(__name__)

UNMATCHED_DETAIL = "no document or tenant has this message id yet"


class Outcome(StrEnum):
    """Result of processing a post; every value but RETRY is stored with the event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    UNMATCHED = "unmatched"
    IGNORED = "ignored"
    UNPROCESSABLE = "unprocessable"
    # The token arrived before with this same content: a retry after a lost response.
    RETRY = "retry"


@dataclass(frozen=True)
class VerifiedWebhook:
    """A post whose signature and timestamp have been verified."""

    payload: Payload
    signed_at: datetime

    @property
    def token(self) -> str:
        return self.payload.signature.token


@dataclass(frozen=True)
class StatusChange:
    subject_type: str
    subject_id: str
    before: str | None
    after: str


@dataclass(frozen=True)
class IngestResult:
    outcome: Outcome
    detail: str
    event: MailgunEvent | None = None
    webhook_event_id: int | None = None
    changes: list[StatusChange] = field(default_factory=list)


async def ingest(session: AsyncSession, webhook: VerifiedWebhook, now: datetime) -> IngestResult:
    """Record a verified post and apply its event; raise TokenReplayed for a reused token."""
    return await session.run_sync(ingest_one, webhook, now)


def ingest_batch(
    session: Session, webhooks: list[VerifiedWebhook], now: datetime
) -> list[IngestResult | TokenReplayed | DatabaseUnavailable]:
    """Ingest several posts in the caller's transaction; return one result per post, in order.

    The posts are applied in message id order, so that concurrent batches on
    PostgreSQL lock shared rows in the same order. The batch first runs inside
    one savepoint. If a post fails, that savepoint is rolled back and the batch
    runs again with a savepoint per post, so only the failing post gets an
    error and its neighbours still commit. Errors that break the whole
    transaction, such as a lost connection, propagate and fail the batch.
    """
    order = sorted(range(len(webhooks)), key=lambda index: _lock_order_key(webhooks[index]))
    results: list[IngestResult | TokenReplayed | DatabaseUnavailable] = [
        DatabaseUnavailable("not processed")
    ] * len(webhooks)
    savepoint = session.begin_nested()
    try:
        for index in order:
            results[index] = _ingest_or_reject(session, webhooks[index], now)
    except Exception:  # noqa: BLE001 - any failure is retried post by post below
        savepoint.rollback()
    else:
        savepoint.commit()
        return results
    for index in order:
        results[index] = _ingest_isolated(session, webhooks[index], now)
    return results


def _lock_order_key(webhook: VerifiedWebhook) -> str:
    try:
        return extract_event(webhook.payload).message_id or ""
    except UnusableEvent:
        return ""


def _ingest_or_reject(
    session: Session, webhook: VerifiedWebhook, now: datetime
) -> IngestResult | TokenReplayed:
    # A replayed token is detected before anything is written, so no rollback is needed.
    try:
        return ingest_one(session, webhook, now)
    except TokenReplayed as error:
        return error


def _ingest_isolated(
    session: Session, webhook: VerifiedWebhook, now: datetime
) -> IngestResult | TokenReplayed | DatabaseUnavailable:
    savepoint = session.begin_nested()
    try:
        result = _ingest_or_reject(session, webhook, now)
    except SQLAlchemyError as error:
        savepoint.rollback()
        logger.error("event with token %s failed: %s", webhook.token[:8], describe(error))
        return DatabaseUnavailable(describe(error))
    except DATABASE_ERRORS:
        # A lost connection fails the whole batch, and the caller returns 503 for every post.
        raise
    except Exception as error:
        # A defect must not fail the other posts of the batch; this post gets 503
        # and Mailgun retries it.
        savepoint.rollback()
        logger.exception("event with token %s failed unexpectedly", webhook.token[:8])
        return DatabaseUnavailable(f"{type(error).__name__} while applying the event")
    savepoint.commit()
    return result


def ingest_one(session: Session, webhook: VerifiedWebhook, now: datetime) -> IngestResult:
    """Synchronous body of `ingest`."""
    payload = webhook.payload
    claim = repository.claim_token(
        session, webhook.token, payload.fingerprint, webhook.signed_at, now
    )
    if claim is TokenClaim.OTHER_EVENT:
        raise TokenReplayed("token was already used by a different event")
    if claim is TokenClaim.SAME_EVENT:
        return IngestResult(Outcome.RETRY, "token already processed for this same event")

    event: MailgunEvent | None = None
    try:
        event = extract_event(payload)
        classification = _classify(event)
    except UnusableEvent as error:
        event_id = repository.insert_webhook_event(
            session,
            **_stored_fields(webhook, event, now),
            outcome=Outcome.UNPROCESSABLE,
            detail=str(error),
            processed_at=now,
        )
        return IngestResult(Outcome.UNPROCESSABLE, str(error), event, event_id)

    if classification is None:
        return IngestResult(Outcome.IGNORED, f"event type {event.event!r} is not tracked", event)

    assert event.message_id is not None  # guaranteed by _classify
    subjects = repository.lock_subjects(session, event.message_id)
    # The outcome is stored with the row; _record corrects it in the rare case
    # that a matching row already had this Mailgun event.
    outcome, detail = _expected_outcome(classification, subjects)
    event_id = repository.insert_webhook_event(
        session,
        **_stored_fields(webhook, event, now),
        outcome=outcome,
        detail=detail,
        processed_at=now,
    )
    if not subjects:
        return IngestResult(Outcome.UNMATCHED, detail, event, event_id)
    return _record(
        session, event, classification, subjects, event_id, webhook.signed_at, now, detail
    )


async def reprocess_stored_event(
    session: AsyncSession, webhook_event_id: int, now: datetime
) -> IngestResult:
    """Apply a stored event again, skipping the signature and token checks passed on receipt.

    Running it twice changes nothing the second time: the audit trail contains each
    Mailgun event once per row, and the status only moves up.
    """
    return await session.run_sync(reprocess_stored_event_sync, webhook_event_id, now)


def reprocess_stored_event_sync(
    session: Session, webhook_event_id: int, now: datetime
) -> IngestResult:
    """Synchronous body of `reprocess_stored_event`."""
    row = repository.get_webhook_event(session, webhook_event_id)
    if row is None:
        raise LookupError(f"stored event {webhook_event_id} does not exist")
    signed_at = repository.as_utc(row.occurred_at) or repository.as_utc(row.received_at) or now
    try:
        payload = parse_stored(row.payload_format, row.raw_payload)
        event = extract_event(payload)
        classification = _classify(event)
    except (MalformedPayload, UnusableEvent) as error:
        return IngestResult(Outcome.UNPROCESSABLE, str(error), webhook_event_id=webhook_event_id)
    if classification is None:
        return IngestResult(Outcome.IGNORED, f"event type {event.event!r} is not tracked", event)

    assert event.message_id is not None  # guaranteed by _classify
    subjects = repository.lock_subjects(session, event.message_id)
    if not subjects:
        repository.set_webhook_event_outcome(
            session, webhook_event_id, Outcome.UNMATCHED, UNMATCHED_DETAIL, now
        )
        return IngestResult(Outcome.UNMATCHED, UNMATCHED_DETAIL, event, webhook_event_id)
    return _record(session, event, classification, subjects, webhook_event_id, signed_at, now, None)


def _classify(event: MailgunEvent) -> statuses.Classification | None:
    classification = statuses.classify(
        event.event, event.severity, event.reason, event.delivery_code
    )
    if classification is not None and event.message_id is None:
        raise UnusableEvent(f"{event.event!r} event has no message id to match")
    return classification


def _expected_outcome(
    classification: statuses.Classification, subjects: list[repository.SubjectRow]
) -> tuple[Outcome, str]:
    if not subjects:
        return Outcome.UNMATCHED, UNMATCHED_DETAIL
    return Outcome.APPLIED, _applied_detail(classification, subjects)


def _applied_detail(
    classification: statuses.Classification, subjects: list[repository.SubjectRow]
) -> str:
    names = ", ".join(f"{s.subject_type}:{s.subject_id}" for s in subjects)
    return f"{classification.audit_type} recorded for {names}"


def _record(
    session: Session,
    event: MailgunEvent,
    classification: statuses.Classification,
    subjects: list[repository.SubjectRow],
    webhook_event_id: int,
    signed_at: datetime,
    now: datetime,
    stored_detail: str | None,
) -> IngestResult:
    """Append the audit events and move the statuses of the locked rows.

    `stored_detail` is the detail already stored with the event; the stored
    outcome is updated only when the result differs from it.
    """
    if classification.severity_inferred:
        logger.warning(
            "failed event %s has severity %r; classified as %s from reason %r and code %s",
            event.event_key,
            event.severity,
            classification.severity,
            event.reason,
            event.delivery_code,
        )

    changes = []
    recorded = []
    for subject in subjects:
        target = statuses.next_status(subject.email_status, classification.audit_type)
        inserted = repository.insert_audit_event(
            session,
            subject_type=subject.subject_type,
            subject_id=subject.subject_id,
            event_type=classification.audit_type,
            mailgun_event=event.event,
            mailgun_event_id=event.event_key,
            message_id=event.message_id,
            occurred_at=event.occurred_at or signed_at,
            recipient=event.recipient,
            severity=classification.severity or event.severity,
            reason=event.reason,
            delivery_code=event.delivery_code,
            status_before=subject.email_status,
            status_after=target or subject.email_status,
            status_changed=target is not None,
            webhook_event_id=webhook_event_id,
            created_at=now,
        )
        if not inserted:
            continue
        recorded.append(subject)
        if target is not None:
            repository.set_subject_status(session, subject, target, now)
            changes.append(
                StatusChange(subject.subject_type, subject.subject_id, subject.email_status, target)
            )

    if recorded:
        outcome = Outcome.APPLIED
        detail = _applied_detail(classification, recorded)
    else:
        outcome = Outcome.DUPLICATE
        detail = "every matching row already has this Mailgun event"
    if detail != stored_detail:
        repository.set_webhook_event_outcome(session, webhook_event_id, outcome, detail, now)
    return IngestResult(outcome, detail, event, webhook_event_id, changes)


def _stored_fields(
    webhook: VerifiedWebhook, event: MailgunEvent | None, now: datetime
) -> dict[str, object]:
    payload = webhook.payload
    fields: dict[str, object] = {
        "received_at": now,
        "token": webhook.token,
        "payload_format": payload.format,
        "raw_payload": payload.raw_text,
    }
    if event is not None:
        fields.update(
            event=event.event,
            mailgun_event_id=event.event_key,
            message_id=event.message_id,
            recipient=event.recipient,
            severity=event.severity,
            reason=event.reason,
            delivery_code=event.delivery_code,
            occurred_at=event.occurred_at or webhook.signed_at,
        )
    return fields


def utc_now() -> datetime:
    return datetime.now(UTC)
