"""Replaying stored webhook events through the ingest rules, one transaction per event.

`mgwebhook events replay` and the reconciler both use `replay_event`, which calls
`ingest.reprocess_stored_event` and only adjusts what is stored about the event.
A replay that finds nothing new leaves the stored row exactly as it was, so
replaying the same events twice changes nothing the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from mgwebhook.db import batch, event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors
from mgwebhook.db.event_queries import PRUNED_PAYLOAD
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.ingest import Outcome, StatusChange, reprocess_stored_event, utc_now

logger = logging.getLogger(__name__)

# Outcomes of a replay besides the ingest outcomes.
SKIPPED = "skipped"
ERROR = "error"

# Replay outcomes that record nothing new, mapped to the stored outcomes they restate.
_NOTHING_NEW = {
    Outcome.DUPLICATE: {Outcome.APPLIED, Outcome.DUPLICATE},
    Outcome.UNMATCHED: {Outcome.UNMATCHED},
}


@dataclass(frozen=True)
class ReplayResult:
    webhook_event_id: int
    event: str | None
    message_id: str | None
    previous_outcome: str | None
    # An ingest Outcome value, SKIPPED or ERROR.
    outcome: str
    detail: str
    changes: list[StatusChange] = field(default_factory=list)
    # True when the stored event and every status are as they were before the replay.
    unchanged: bool = True


async def replay_event(session: AsyncSession, webhook_event_id: int, now: datetime) -> ReplayResult:
    """Apply a stored event again in the caller's transaction, which the caller commits.

    Raise LookupError when no event has this id. An event whose payload was
    pruned is skipped, since its raw payload can no longer be parsed.
    """
    stored = await event_queries.get_event(session, webhook_event_id)
    if stored is None:
        raise LookupError(f"stored event {webhook_event_id} does not exist")
    if stored.message_id is not None:
        # A concurrent replay of this event holds these row locks until it commits.
        # Reading the stored outcome again after it keeps that replay's `applied`
        # from being taken for nothing new and overwritten with `duplicate`.
        await session.run_sync(batch.lock_subjects, stored.message_id)
        stored = await event_queries.get_event(session, webhook_event_id)
        if stored is None:
            raise LookupError(f"stored event {webhook_event_id} does not exist")
    if stored.raw_payload == PRUNED_PAYLOAD:
        return ReplayResult(
            webhook_event_id,
            stored.event,
            stored.message_id,
            stored.outcome,
            SKIPPED,
            "the raw payload was removed by `mgwebhook events prune`",
        )

    result = await reprocess_stored_event(session, webhook_event_id, now)
    unchanged = False
    if result.outcome in (Outcome.UNPROCESSABLE, Outcome.IGNORED):
        # reprocess_stored_event records the other outcomes itself.
        unchanged = (stored.outcome, stored.detail) == (result.outcome, result.detail)
        if not unchanged:
            await event_queries.set_outcome(
                session, webhook_event_id, result.outcome, result.detail, now
            )
    elif stored.outcome in _NOTHING_NEW.get(result.outcome, set()):
        # Keep the outcome, detail and time of the processing that did record something.
        unchanged = True
        await event_queries.set_outcome(
            session, webhook_event_id, stored.outcome, stored.detail, stored.processed_at
        )
    return ReplayResult(
        webhook_event_id,
        stored.event,
        stored.message_id,
        stored.outcome,
        result.outcome,
        result.detail,
        list(result.changes),
        unchanged,
    )


async def replay_events(
    engine: AsyncEngine,
    webhook_event_ids: Sequence[int],
    *,
    dry_run: bool = False,
    on_result: Callable[[ReplayResult], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> list[ReplayResult]:
    """Replay events in id order and return one result per event.

    Each event runs in its own transaction, so a failure is reported as ERROR
    for that event and does not undo the others. A dry run replays all events in
    one transaction, each in a savepoint, and rolls it back at the end, so later
    events see what earlier ones would have changed.
    """
    sessions = session_factory(engine)
    results: list[ReplayResult] = []

    def report(result: ReplayResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if dry_run:
        # NOTE: on SQLite the dry run holds the database write lock until it ends,
        # so webhooks received meanwhile wait up to the busy timeout.
        async with translate_errors(), sessions() as session:
            transaction = await session.begin()
            try:
                for webhook_event_id in webhook_event_ids:
                    report(await _replay_in_savepoint(session, webhook_event_id, clock()))
            finally:
                await transaction.rollback()
        return results

    for webhook_event_id in webhook_event_ids:
        try:
            async with translate_errors(), sessions() as session, session.begin():
                result = await replay_event(session, webhook_event_id, clock())
        except (DatabaseUnavailable, LookupError) as error:
            logger.error("replay of stored event %d failed: %s", webhook_event_id, error)
            result = ReplayResult(webhook_event_id, None, None, None, ERROR, str(error))
        report(result)
    return results


async def _replay_in_savepoint(
    session: AsyncSession, webhook_event_id: int, now: datetime
) -> ReplayResult:
    try:
        async with translate_errors(), session.begin_nested():
            return await replay_event(session, webhook_event_id, now)
    except (DatabaseUnavailable, LookupError) as error:
        return ReplayResult(webhook_event_id, None, None, None, ERROR, str(error))
