"""The ingest transaction: replay guard, lookup, status rules and audit trail.

The live endpoint and replay both run through here. The caller owns the
session and commits once this returns, so the token, the stored event, the
audit events and the status changes become durable together or not at all.

The work is synchronous code on a `Session`. The endpoint's writers apply a
batch of posts with `apply_batch` and, when that fails, post by post with
`apply_each`; `ingest_batch` combines the two inside a savepoint. Replay and
tracking use `reprocess_stored_event`. Async callers go through
`AsyncSession.run_sync`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from mgwebhook import statuses, trail
from mgwebhook.db import batch, repository
from mgwebhook.db.errors import DATABASE_ERRORS, describe, is_busy
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


RETRY_DETAIL = "token already processed for this same event"
DUPLICATE_DETAIL = "every matching row already has this Mailgun event"


def ingest_batch(
    session: Session, webhooks: list[VerifiedWebhook], now: datetime
) -> list[IngestResult | TokenReplayed | DatabaseUnavailable]:
    """Ingest several posts in the caller's transaction; return one result per post, in order.

    The batch first runs with `apply_batch` inside one savepoint. If that
    fails, the savepoint is rolled back and `apply_each` runs the posts one by
    one, so only the failing post gets an error and its neighbours still
    commit. A caller that owns the transaction can save the savepoint: run
    `apply_batch`, and after a failure roll back and run `apply_each` in a new
    transaction.
    """
    savepoint = session.begin_nested()
    try:
        results: list[IngestResult | TokenReplayed | DatabaseUnavailable]
        results = list(apply_batch(session, webhooks, now))
    except Exception:  # noqa: BLE001 - any failure is retried post by post below
        savepoint.rollback()
    else:
        savepoint.commit()
        return results
    return apply_each(session, webhooks, now)


def apply_each(
    session: Session, webhooks: list[VerifiedWebhook], now: datetime
) -> list[IngestResult | TokenReplayed | DatabaseUnavailable]:
    """Ingest the posts one by one, each in a savepoint of its own; return results in order.

    A post that fails gets DatabaseUnavailable (its Mailgun retry comes back
    later) and the others still apply. Errors that break the whole
    transaction, such as a lost connection, propagate and fail the batch.

    Every matching row of the batch is locked first, as in `apply_batch`.
    Then the posts run in arrival order, each claiming its token before it
    writes. Posts that share a token also share their rows, so two
    transactions meet at the row locks before any token. Only posts that match
    no row (unmatched or untracked events) claim tokens out of sorted order:
    at worst PostgreSQL breaks a deadlock between two such transactions, and
    one post gets 503 and a retry from Mailgun.
    """
    message_ids = []
    for webhook in webhooks:
        post = _read(webhook)
        if post.event is not None and post.event.message_id is not None:
            message_ids.append(post.event.message_id)
    batch.lock_rows_only(session, message_ids)
    return [_ingest_isolated(session, webhook, now) for webhook in webhooks]


def _ingest_isolated(
    session: Session, webhook: VerifiedWebhook, now: datetime
) -> IngestResult | TokenReplayed | DatabaseUnavailable:
    savepoint = session.begin_nested()
    try:
        [result] = apply_batch(session, [webhook], now)
    except SQLAlchemyError as error:
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            # A lost connection fails the whole batch, as in the branch below.
            raise
        if is_busy(error):
            # The next post would wait the whole busy timeout again.
            raise
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


class AuditConflict(RuntimeError):
    """An audit row appeared that the row locks should have kept out; nothing is kept."""


@dataclass
class _Post:
    """One post of a batch on its way through `apply_batch`."""

    webhook: VerifiedWebhook
    event: MailgunEvent | None = None
    classification: statuses.Classification | None = None
    # Why the event cannot be used, when it cannot.
    problem: str | None = None
    result: IngestResult | TokenReplayed | None = None
    # Columns of the stored event, when the post is stored.
    columns: dict[str, Any] | None = None
    entries: list[trail.AuditEntry] = field(default_factory=list)


def apply_batch(
    session: Session, webhooks: list[VerifiedWebhook], now: datetime
) -> list[IngestResult | TokenReplayed]:
    """Lock the rows, claim the tokens, store the posts and apply their events.

    Every step is one set-based statement per table. Events for the same row
    apply one after the other in arrival order. Any database error or defect
    propagates, and the caller rolls back whatever this wrote.

    Locks are taken in one order by every transaction: the matching rows
    first (see `batch.lock_subjects_of`), then the tokens in sorted order.
    `apply_each` keeps the same order, so concurrent transactions on
    PostgreSQL wait for each other instead of deadlocking.
    """
    posts = [_read(webhook) for webhook in webhooks]
    tracked = [post.event for post in posts if post.event and post.classification]
    matches = _lock_rows(session, tracked)
    fresh = _claim_tokens(session, posts, now)
    for post in fresh:
        _decide(post, matches, now)

    stored = [post for post in fresh if post.columns is not None]
    event_ids = batch.insert_webhook_events(session, [post.columns or {} for post in stored])
    audits = []
    for post in stored:
        assert isinstance(post.result, IngestResult)
        event_id = event_ids[post.webhook.token]
        post.result = replace(post.result, webhook_event_id=event_id)
        if post.event is not None and post.classification is not None:
            audits += _audit_rows(
                post.event, post.classification, post.entries, event_id, post.webhook.signed_at, now
            )
    _write_trail(session, audits, matches, now)

    results = []
    for post in posts:
        assert post.result is not None
        results.append(post.result)
    return results


def _read(webhook: VerifiedWebhook) -> _Post:
    post = _Post(webhook)
    try:
        post.event = extract_event(webhook.payload)
        post.classification = _classify(post.event)
    except UnusableEvent as error:
        post.problem = str(error)
    return post


def _claim_tokens(session: Session, posts: list[_Post], now: datetime) -> list[_Post]:
    """Claim every token and return the posts whose token is new.

    Each post whose token was used before gets its result here. A token that
    arrives twice in one batch is claimed by its first post, and a later post
    with it is a retry or a replay, as if it had come in a later batch.
    """
    first: dict[str, _Post] = {}
    for post in posts:
        first.setdefault(post.webhook.token, post)
    uses = [
        batch.TokenUse(token, post.webhook.payload.fingerprint, post.webhook.signed_at)
        for token, post in first.items()
    ]
    previous = batch.claim_tokens(session, uses, now)
    fresh = []
    for post in posts:
        token = post.webhook.token
        known = previous[token]
        if known is None:
            if first[token] is post:
                fresh.append(post)
                continue
            known = first[token].webhook.payload.fingerprint
        if known == post.webhook.payload.fingerprint:
            post.result = IngestResult(Outcome.RETRY, RETRY_DETAIL)
        else:
            post.result = TokenReplayed("token was already used by a different event")
    return fresh


def _lock_rows(session: Session, events: list[MailgunEvent]) -> dict[str, list[trail.RowState]]:
    """Lock the rows matching the events' message ids; return their states by message id.

    Each state contains the Mailgun events of this batch that the row's audit
    trail already has.
    """
    matches = batch.lock_subjects_of(
        session, [event.message_id for event in events if event.message_id is not None]
    )
    candidates = [
        (row.subject_type, row.subject_id, event.event_key)
        for event in events
        if event.message_id is not None
        for row in matches.get(event.message_id, [])
    ]
    recorded: dict[tuple[str, str], set[str]] = {}
    for subject_type, subject_id, event_key in batch.recorded_events(session, candidates):
        recorded.setdefault((subject_type, subject_id), set()).add(event_key)

    # The audit trail names a row by its type and id text, so rows whose ids
    # read the same (such as one UUID stored in two cases) share one state.
    states: dict[tuple[str, str], trail.RowState] = {}
    by_message_id: dict[str, list[trail.RowState]] = {}
    for message_id, rows in matches.items():
        for row in rows:
            name = (row.subject_type, row.subject_id)
            state = states.get(name)
            if state is None:
                state = trail.RowState(
                    row.subject_type,
                    row.subject_id,
                    (row.key,),
                    row.email_status,
                    recorded.get(name, set()),
                )
                states[name] = state
            elif row.key not in state.keys:
                state.keys += (row.key,)
            matched = by_message_id.setdefault(message_id, [])
            if state not in matched:
                matched.append(state)
    return by_message_id


def _decide(post: _Post, matches: dict[str, list[trail.RowState]], now: datetime) -> None:
    """Set the post's result, the columns of its stored event and its audit entries."""
    event = post.event
    if post.problem is not None:
        post.result = IngestResult(Outcome.UNPROCESSABLE, post.problem, event)
        post.columns = _stored_columns(
            post.webhook, event, Outcome.UNPROCESSABLE, post.problem, now
        )
        return
    assert event is not None
    if post.classification is None:
        post.result = IngestResult(
            Outcome.IGNORED, f"event type {event.event!r} is not tracked", event
        )
        return
    assert event.message_id is not None  # guaranteed by _classify
    rows = matches.get(event.message_id, [])
    outcome, detail, post.entries = _apply(event, post.classification, rows)
    post.result = IngestResult(outcome, detail, event, changes=_changes(post.entries))
    post.columns = _stored_columns(post.webhook, event, outcome, detail, now)


def _apply(
    event: MailgunEvent, classification: statuses.Classification, rows: list[trail.RowState]
) -> tuple[Outcome, str, list[trail.AuditEntry]]:
    """Apply a tracked event to its matched rows' states; return its outcome and audit entries."""
    if not rows:
        return Outcome.UNMATCHED, UNMATCHED_DETAIL, []
    if classification.severity_inferred:
        logger.warning(
            "failed event %s has severity %r; classified as %s from reason %r and code %s",
            event.event_key,
            event.severity,
            classification.severity,
            event.reason,
            event.delivery_code,
        )
    entries = trail.apply_event(rows, event.event_key, classification.audit_type)
    if not entries:
        return Outcome.DUPLICATE, DUPLICATE_DETAIL, entries
    names = ", ".join(f"{entry.row.subject_type}:{entry.row.subject_id}" for entry in entries)
    return Outcome.APPLIED, f"{classification.audit_type} recorded for {names}", entries


def _write_trail(
    session: Session,
    audits: list[dict[str, Any]],
    matches: dict[str, list[trail.RowState]],
    now: datetime,
) -> None:
    """Append the audit rows and store the statuses the events moved."""
    inserted = batch.insert_audit_events(session, audits)
    if inserted != len(audits):
        raise AuditConflict(
            f"{len(audits) - inserted} of {len(audits)} audit rows were already recorded"
        )
    moves = [
        (row.subject_type, key, row.status)
        for rows in matches.values()
        for row in rows
        if row.moved and row.status is not None
        for key in row.keys
    ]
    batch.set_subject_statuses(session, moves, now)


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
    matches = _lock_rows(session, [event])
    outcome, detail, entries = _apply(event, classification, matches.get(event.message_id, []))
    audits = _audit_rows(event, classification, entries, webhook_event_id, signed_at, now)
    _write_trail(session, audits, matches, now)
    repository.set_webhook_event_outcome(session, webhook_event_id, outcome, detail, now)
    return IngestResult(outcome, detail, event, webhook_event_id, _changes(entries))


def _classify(event: MailgunEvent) -> statuses.Classification | None:
    classification = statuses.classify(
        event.event, event.severity, event.reason, event.delivery_code
    )
    if classification is not None and event.message_id is None:
        raise UnusableEvent(f"{event.event!r} event has no message id to match")
    return classification


def _changes(entries: list[trail.AuditEntry]) -> list[StatusChange]:
    return [
        StatusChange(
            entry.row.subject_type, entry.row.subject_id, entry.status_before, entry.status_after
        )
        for entry in entries
        if entry.status_changed and entry.status_after is not None
    ]


def _audit_rows(
    event: MailgunEvent,
    classification: statuses.Classification,
    entries: list[trail.AuditEntry],
    webhook_event_id: int,
    signed_at: datetime,
    now: datetime,
) -> list[dict[str, Any]]:
    return [
        {
            "subject_type": entry.row.subject_type,
            "subject_id": entry.row.subject_id,
            "event_type": classification.audit_type,
            "mailgun_event": event.event,
            "mailgun_event_id": event.event_key,
            "message_id": event.message_id,
            "occurred_at": event.occurred_at or signed_at,
            "recipient": event.recipient,
            "severity": classification.severity or event.severity,
            "reason": event.reason,
            "delivery_code": event.delivery_code,
            "status_before": entry.status_before,
            "status_after": entry.status_after,
            "status_changed": entry.status_changed,
            "webhook_event_id": webhook_event_id,
            "created_at": now,
        }
        for entry in entries
    ]


def _stored_columns(
    webhook: VerifiedWebhook,
    event: MailgunEvent | None,
    outcome: Outcome,
    detail: str,
    now: datetime,
) -> dict[str, Any]:
    """Columns of a stored post; every post has every key, so one statement inserts them all."""
    payload = webhook.payload
    return {
        "received_at": now,
        "token": webhook.token,
        "payload_format": payload.format,
        "raw_payload": payload.raw_text,
        "event": event.event if event else None,
        "mailgun_event_id": event.event_key if event else None,
        "message_id": event.message_id if event else None,
        "recipient": event.recipient if event else None,
        "severity": event.severity if event else None,
        "reason": event.reason if event else None,
        "delivery_code": event.delivery_code if event else None,
        "occurred_at": (event.occurred_at or webhook.signed_at) if event else None,
        "outcome": outcome,
        "detail": detail,
        "processed_at": now,
    }


def utc_now() -> datetime:
    return datetime.now(UTC)
