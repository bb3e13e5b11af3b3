"""Reconciliation: unmatched events applied once their row exists, while serving."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from mgwebhook.config import ReconcileSettings, Settings
from mgwebhook.db.engine import create_engine, session_factory
from mgwebhook.ingest import utc_now
from mgwebhook.reconcile import reconcile_once, run_reconciler
from mgwebhook.replay import replay_event
from mgwebhook.server.app import create_app
from tests.conftest import SIGNING_KEY
from tests.event_support import event_outcomes, post_event, snapshot
from tests.helpers import audit_rows, insert_document, status_of

WINDOW = timedelta(hours=1)
# Upper bound for background work to finish; the tests poll and stop early.
DEADLINE_SECONDS = 15.0


async def wait_until(condition: Callable[[], Awaitable[bool]]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_SECONDS
    while not await condition():
        assert loop.time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.05)


@pytest.fixture
async def quiet_client(aiohttp_client, engine, settings):
    """A client of an app without the background reconciler, so tests drive it directly."""
    app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    return await aiohttp_client(app)


async def test_reconcile_applies_event_before_row(quiet_client, engine, caplog):
    caplog.set_level(logging.INFO, logger="mgwebhook.reconcile")
    await post_event(quiet_client, "delivered", "m1@mg.example.com")
    assert await event_outcomes(engine) == {1: "unmatched"}
    # The invoicing API commits its row 2 s after the webhook arrived.
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")

    results = await reconcile_once(engine, WINDOW, utc_now() + timedelta(seconds=2))

    assert [(result.webhook_event_id, result.outcome) for result in results] == [(1, "applied")]
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await event_outcomes(engine) == {1: "applied"}
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True)
    ]
    assert [record.getMessage() for record in caplog.records] == [
        "reconciled stored event 1 (delivered for message id m1@mg.example.com): "
        "EMAIL_DELIVERED recorded for document:INV-1"
    ]
    assert caplog.records[0].levelno == logging.INFO

    # A second pass finds nothing left to do.
    assert await reconcile_once(engine, WINDOW, utc_now() + timedelta(seconds=4)) == []


async def test_reconcile_skips_events_older_than_window(quiet_client, engine):
    await post_event(quiet_client, "delivered", "m1@mg.example.com")
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")

    results = await reconcile_once(engine, WINDOW, utc_now() + timedelta(hours=2))

    assert results == []
    assert await event_outcomes(engine) == {1: "unmatched"}
    assert await status_of(engine, "INV-1") == "SENT"


async def test_reconcile_leaves_events_without_row_untouched(quiet_client, engine):
    await post_event(quiet_client, "delivered", "m1@mg.example.com")
    await insert_document(engine, "INV-2", "<other@mg.example.com>")
    before = await snapshot(engine)

    assert await reconcile_once(engine, WINDOW) == []
    assert await snapshot(engine) == before


async def test_reconciler_task_applies_event(quiet_client, engine):
    await post_event(quiet_client, "complained", "m1@mg.example.com")
    task = asyncio.create_task(run_reconciler(engine, WINDOW, 0.05))
    try:
        await insert_document(engine, "INV-1", "<m1@mg.example.com>")

        async def applied() -> bool:
            return await status_of(engine, "INV-1") == "COMPLAINED"

        await wait_until(applied)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await event_outcomes(engine) == {1: "applied"}


async def test_serving_app_applies_late_row(aiohttp_client, engine, settings: Settings):
    reconciling = dataclasses.replace(settings, reconcile=ReconcileSettings(interval_seconds=1))
    app = create_app(reconciling, [SIGNING_KEY], engine=engine, create_tables=False)
    client = await aiohttp_client(app)
    await post_event(client, "delivered", "m1@mg.example.com")
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")

    async def applied() -> bool:
        return (await event_outcomes(engine)) == {1: "applied"}

    await wait_until(applied)
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_reconciler_keeps_going_on_database_errors(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="mgwebhook.reconcile")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/missing-directory/mgwebhook.db")
    task = asyncio.create_task(run_reconciler(engine, WINDOW, 0.01))
    try:

        async def failed_twice() -> bool:
            return any("(2 in a row)" in record.getMessage() for record in caplog.records)

        await wait_until(failed_twice)
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await engine.dispose()
    first = caplog.records[0]
    assert first.levelno == logging.ERROR
    assert first.getMessage().startswith("reconciliation pass failed (1 in a row): ")
    assert first.getMessage().endswith("; next try in 0.01 s")


async def test_reconcile_off_when_interval_is_zero(aiohttp_client, engine, settings, caplog):
    caplog.set_level(logging.INFO, logger="mgwebhook.reconcile")
    off = dataclasses.replace(settings, reconcile=ReconcileSettings(interval_seconds=0))
    app = create_app(off, [SIGNING_KEY], engine=engine, create_tables=False)
    await aiohttp_client(app)

    assert [record.getMessage() for record in caplog.records] == [
        "reconciliation is off (reconcile.interval_seconds = 0)"
    ]


async def test_concurrent_replays_keep_applied(quiet_client, engine):
    await post_event(quiet_client, "delivered", "m1@mg.example.com")
    await insert_document(engine, "INV-1", "<m1@mg.example.com>")
    sessions = session_factory(engine)

    async def replay_in_own_transaction():
        async with sessions() as session, session.begin():
            return await replay_event(session, 1, utc_now())

    async with sessions() as session, session.begin():
        first = await replay_event(session, 1, utc_now())
        second_task = asyncio.create_task(replay_in_own_transaction())
        await asyncio.sleep(0.5)
        # The second replay waits for the locks of the first until it commits.
        assert not second_task.done()
    second = await second_task

    assert first.outcome == "applied"
    assert second.outcome == "duplicate"
    assert second.previous_outcome == "applied"
    assert second.unchanged is True
    assert await event_outcomes(engine) == {1: "applied"}
    assert await status_of(engine, "INV-1") == "DELIVERED"
