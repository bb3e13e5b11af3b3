"""Group commit: correctness of batches, not their speed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from aiohttp import hdrs
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.config import IngestSettings
from mgwebhook.db import batch
from mgwebhook.db.batch import TokenUse
from mgwebhook.db.engine import session_factory
from mgwebhook.ingest import IngestResult, VerifiedWebhook, apply_batch, apply_each, ingest_batch
from mgwebhook.payloads import parse_body
from mgwebhook.server.app import create_app
from mgwebhook.server.keys import WRITER
from tests.conftest import SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    WEBHOOK_PATH,
    audit_rows,
    fixture,
    fresh_token,
    insert_document,
    signed,
    status_of,
    stored_events,
    token_count,
)
from tests.reliability_support import wait_until

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def verified(body: dict) -> VerifiedWebhook:
    payload = parse_body("application/json", json.dumps(body).encode())
    return VerifiedWebhook(payload, NOW)


async def run_batch(engine: AsyncEngine, webhooks: list[VerifiedWebhook]) -> list:
    async with session_factory(engine)() as session, session.begin():
        return await session.run_sync(ingest_batch, webhooks, NOW)


def outcomes(results: list) -> list[str]:
    return [
        result.outcome if isinstance(result, IngestResult) else type(result).__name__
        for result in results
    ]


async def test_duplicate_retry_and_replay_in_one_batch(engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    token = fresh_token()
    first = signed(fixture("delivered"), token=token)
    same_event_new_token = signed(fixture("delivered"))
    forged = {"signature": first["signature"], "event-data": fixture("complained")}

    results = await run_batch(
        engine,
        [verified(first), verified(same_event_new_token), verified(forged), verified(first)],
    )
    assert outcomes(results) == ["applied", "duplicate", "TokenReplayed", "retry"]
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True)
    ]
    assert await token_count(engine) == 2
    assert await status_of(engine, "INV-1") == "DELIVERED"


async def test_out_of_order_events_in_one_batch(engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    names = ["complained", "delivered", "failed_permanent", "failed_temporary"]
    results = await run_batch(engine, [verified(signed(fixture(n))) for n in names])
    assert outcomes(results) == ["applied"] * 4
    assert await status_of(engine, "INV-1") == "COMPLAINED"
    assert [row[5] for row in await audit_rows(engine)] == [True, False, False, False]


async def _install_failing_trigger(engine: AsyncEngine) -> None:
    """Make the database reject any stored event for boom@example.com."""
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(
                text(
                    "CREATE FUNCTION reject_boom() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.recipient = 'boom@example.com' THEN "
                    "RAISE EXCEPTION 'rejected by test trigger'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await connection.execute(
                text(
                    "CREATE TRIGGER reject_boom BEFORE INSERT ON webhook_events "
                    "FOR EACH ROW EXECUTE FUNCTION reject_boom()"
                )
            )
        else:
            await connection.execute(
                text(
                    "CREATE TRIGGER reject_boom BEFORE INSERT ON webhook_events "
                    "WHEN NEW.recipient = 'boom@example.com' "
                    "BEGIN SELECT RAISE(ABORT, 'rejected by test trigger'); END"
                )
            )


async def test_failing_event_does_not_fail_its_neighbours(engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    await _install_failing_trigger(engine)
    bad = fixture("complained", recipient="boom@example.com")
    webhooks = [
        verified(signed(fixture("delivered"))),
        verified(signed(bad)),
        verified(signed(fixture("failed_permanent"))),
    ]
    results = await run_batch(engine, webhooks)
    assert outcomes(results) == ["applied", "DatabaseUnavailable", "applied"]
    assert await status_of(engine, "INV-1") == "FAILED"
    assert [row[2] for row in await audit_rows(engine)] == ["EMAIL_DELIVERED", "EMAIL_FAILED"]
    # The failed post's token was rolled back with its savepoint, so a retry can succeed.
    assert await token_count(engine) == 2


async def test_failing_event_over_http_gets_503_others_200(client, engine):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    await _install_failing_trigger(engine)
    bodies = [
        signed(fixture("delivered")),
        signed(fixture("complained", recipient="boom@example.com")),
        signed(fixture("failed_permanent")),
    ]
    responses = await asyncio.gather(*(client.post(WEBHOOK_PATH, json=b) for b in bodies))
    assert [r.status for r in responses] == [200, 503, 200]
    assert responses[1].headers[hdrs.RETRY_AFTER] == "30"
    assert await status_of(engine, "INV-1") == "FAILED"


async def _hold_write_lock(engine: AsyncEngine, locked: asyncio.Event, release: asyncio.Event):
    """Hold a lock that blocks every ingest transaction until `release` is set."""
    async with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            await connection.begin()
            await connection.execute(text("LOCK TABLE webhook_tokens IN EXCLUSIVE MODE"))
        else:
            # The engine issues BEGIN IMMEDIATE, which takes SQLite's write lock.
            await connection.begin()
        locked.set()
        await release.wait()
        await connection.rollback()


async def _wait_until(condition) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_full_queue_is_503_and_queued_posts_commit(engine, settings):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    small = replace(settings, ingest=IngestSettings(queue_size=1, max_batch_size=1, writers=1))
    app = create_app(small, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    locked, release = asyncio.Event(), asyncio.Event()
    async with TestClient(TestServer(app)) as client:
        holder = asyncio.create_task(_hold_write_lock(engine, locked, release))
        await locked.wait()

        writer = app[WRITER]
        in_writer = asyncio.create_task(
            client.post(WEBHOOK_PATH, json=signed(fixture("delivered")))
        )
        await _wait_until(lambda: writer.in_flight == 1 and writer.waiting == 0)
        queued = asyncio.create_task(client.post(WEBHOOK_PATH, json=signed(fixture("complained"))))
        await _wait_until(lambda: writer.waiting == 1)
        rejected = await client.post(WEBHOOK_PATH, json=signed(fixture("failed_permanent")))
        assert rejected.status == 503
        assert rejected.headers[hdrs.RETRY_AFTER] == "30"
        assert await rejected.json() == {
            "ok": False,
            "error": "too many webhooks waiting; retry later",
        }

        release.set()
        await holder
        assert (await in_writer).status == 200
        assert (await queued).status == 200
    assert await status_of(engine, "INV-1") == "COMPLAINED"
    assert [outcome for *_, outcome in await stored_events(engine)] == ["applied", "applied"]


@pytest.mark.parametrize("batch_size", [1, 7, 200])
async def test_batch_size_does_not_change_results(engine, settings, batch_size):
    small = replace(settings, ingest=IngestSettings(max_batch_size=batch_size))
    app = create_app(small, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    for index in range(10):
        await insert_document(engine, f"INV-{index}", f"<m-{index}@mg.example.com>")
    bodies = []
    for index in range(10):
        for name in ("delivered", "failed_permanent"):
            data = fixture(name)
            data["message"]["headers"]["message-id"] = f"m-{index}@mg.example.com"
            bodies.extend([signed(data), signed(data)])
    async with TestClient(TestServer(app)) as client:
        responses = await asyncio.gather(*(client.post(WEBHOOK_PATH, json=b) for b in bodies))
        assert {r.status for r in responses} == {200}
    for index in range(10):
        assert await status_of(engine, f"INV-{index}") == "FAILED"
    assert len(await audit_rows(engine)) == 20
    found = sorted(outcome for *_, outcome in await stored_events(engine))
    assert found == ["applied"] * 20 + ["duplicate"] * 20


async def _lock_waiters(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        statement = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int((await connection.execute(statement)).scalar_one())


@pytest.mark.parametrize("apply", [apply_batch, apply_each], ids=["batch", "each"])
async def test_rows_are_locked_before_tokens(engine, apply):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite locks the whole database at BEGIN IMMEDIATE")
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    webhook = verified(signed(fixture("delivered")))
    use = TokenUse(webhook.token, webhook.payload.fingerprint, NOW)
    sessions = session_factory(engine)

    async def apply_alone() -> list:
        async with sessions() as session, session.begin():
            return await session.run_sync(apply, [webhook], NOW)

    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(text("SELECT id FROM documents WHERE id = 'INV-1' FOR UPDATE"))
        waiting = asyncio.create_task(apply_alone())
        await wait_until(lambda: _lock_waiters(engine), "the post waits for the row lock")
        # The waiting transaction has claimed no token yet, so another one claims it at once.
        async with sessions() as session, session.begin():
            await session.execute(text("SET LOCAL lock_timeout = '5s'"))
            claimed = await session.run_sync(batch.claim_tokens, [use], NOW)
        assert claimed == {webhook.token: None}
        await holder.rollback()
    assert outcomes(await waiting) == ["retry"]
