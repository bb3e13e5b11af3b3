"""Periodic retry of recent unmatched events while the service runs.

Mailgun can deliver a webhook before the invoicing API commits the row that
contains the message id. Such an event is stored as unmatched. A reconciliation
pass applies it once the row exists, as long as it was received within the
configured window. Older events wait for `mgwebhook events replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db import event_queries
from mgwebhook.db.engine import session_factory
from mgwebhook.db.errors import translate_errors
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.ingest import Outcome, utc_now
from mgwebhook.replay import ReplayResult, replay_event
from mgwebhook.server.keys import ENGINE, SETTINGS

logger = logging.getLogger(__name__)


async def reconcile_once(
    engine: AsyncEngine, window: timedelta, now: datetime | None = None
) -> list[ReplayResult]:
    """Replay unmatched events received within `window` whose message id now has a row.

    Each event runs in its own transaction. A database error on one event is
    logged and the pass goes on with the next. An error while selecting the
    events raises DatabaseUnavailable.
    """
    now = now or utc_now()
    sessions = session_factory(engine)
    async with translate_errors(), sessions() as session, session.begin():
        candidates = await event_queries.reconcilable_event_ids(session, now - window)

    results = []
    for webhook_event_id in candidates:
        try:
            async with translate_errors(), sessions() as session, session.begin():
                result = await replay_event(session, webhook_event_id, now)
        except DatabaseUnavailable as error:
            logger.error("reconciliation of stored event %d failed: %s", webhook_event_id, error)
            continue
        except LookupError:
            logger.info(
                "stored event %d was pruned before reconciliation reached it", webhook_event_id
            )
            continue
        if result.outcome == Outcome.APPLIED:
            logger.info(
                "reconciled stored event %d (%s for message id %s): %s",
                webhook_event_id,
                result.event,
                result.message_id,
                result.detail,
            )
        results.append(result)
    return results


async def run_reconciler(
    engine: AsyncEngine,
    window: timedelta,
    interval_seconds: float,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Run a reconciliation pass every `interval_seconds` until cancelled.

    The first pass starts one interval after the call. A failed pass is logged
    and the next one runs on schedule.
    """
    failures = 0
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await reconcile_once(engine, window, clock())
        except DatabaseUnavailable as error:
            failures += 1
            logger.error(
                "reconciliation pass failed (%d in a row): %s; next try in %s s",
                failures,
                error,
                interval_seconds,
            )
            continue
        except Exception:
            # A bug in one pass must not stop reconciliation for the life of the process.
            failures += 1
            logger.exception("reconciliation pass failed unexpectedly (%d in a row)", failures)
            continue
        if failures:
            logger.info("reconciliation pass succeeded after %d failed pass(es)", failures)
            failures = 0


async def reconcile_context(app: web.Application) -> AsyncIterator[None]:
    """Run the reconciler for the life of the application (an aiohttp cleanup context).

    It must come after the database context, which sets the engine.
    """
    settings = app[SETTINGS].reconcile
    if settings.interval_seconds == 0:
        logger.info("reconciliation is off (reconcile.interval_seconds = 0)")
        yield
        return

    task = asyncio.create_task(
        run_reconciler(
            app[ENGINE],
            timedelta(seconds=settings.window_seconds),
            settings.interval_seconds,
        ),
        name="mgwebhook-reconciler",
    )
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
