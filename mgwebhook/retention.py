"""Removal of stored webhook events and tokens past their retention period.

An event that an audit row points to is kept, but its raw payload is replaced
by the empty string. The audit trail so stays unchanged and still leads to the
event's normalised fields and outcome, while the payload with its headers and
addresses is gone. Every other event older than the cutoff is deleted.

A token is deleted only once both its receipt and its signature timestamp are
older than the retention period and the signature's maximum age, so a captured
signature block can never be replayed after its token was deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db import event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors

# Rows changed per transaction, so a large first prune does not hold locks for long.
PRUNE_BATCH_SIZE = 1000


@dataclass(frozen=True)
class PruneResult:
    events_deleted: int
    payloads_removed: int
    tokens_deleted: int
    event_cutoff: datetime
    token_cutoff: datetime
    dry_run: bool


def cutoffs(
    older_than: timedelta, max_age_seconds: int, now: datetime
) -> tuple[datetime, datetime]:
    """Return the event cutoff and the token cutoff for a prune at `now`."""
    token_retention = max(older_than, timedelta(seconds=max_age_seconds))
    return now - older_than, now - token_retention


async def prune(
    engine: AsyncEngine,
    older_than: timedelta,
    max_age_seconds: int,
    now: datetime,
    *,
    dry_run: bool = False,
    batch_size: int = PRUNE_BATCH_SIZE,
) -> PruneResult:
    """Delete or blank events received before `now - older_than` and delete old tokens.

    A dry run only counts. Otherwise each batch commits on its own, so an
    interrupted prune keeps the batches it finished and can simply run again.
    """
    if older_than <= timedelta(0):
        raise ValueError(f"retention period {older_than} must be positive")
    event_cutoff, token_cutoff = cutoffs(older_than, max_age_seconds, now)
    sessions = session_factory(engine)

    if dry_run:
        async with translate_errors(), sessions() as session, session.begin():
            events, payloads, tokens = await event_queries.count_prunable(
                session, event_cutoff, token_cutoff
            )
        return PruneResult(events, payloads, tokens, event_cutoff, token_cutoff, dry_run=True)

    totals: list[int] = []
    for step, cutoff in (
        (event_queries.delete_old_events, event_cutoff),
        (event_queries.blank_old_payloads, event_cutoff),
        (event_queries.delete_old_tokens, token_cutoff),
    ):
        total = 0
        while True:
            async with translate_errors(), sessions() as session, session.begin():
                changed = await step(session, cutoff, batch_size)
            total += changed
            if changed == 0:
                break
        totals.append(total)
    events, payloads, tokens = totals
    return PruneResult(events, payloads, tokens, event_cutoff, token_cutoff, dry_run=False)
