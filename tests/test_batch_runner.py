"""The PostgreSQL batch runner's kept connections: how many, and which it drops."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from mgwebhook.db.engine import session_factory
from mgwebhook.errors import DatabaseUnavailable
from mgwebhook.ingest import IngestResult, apply_each
from mgwebhook.server.writer import AsyncBatchRunner
from tests.helpers import FIXTURE_MESSAGE_ID, fixture, insert_document, signed, status_of
from tests.test_batching import NOW, verified

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def delivered(number: int):
    data = fixture("delivered", id=f"runner-{number}")
    data["message"]["headers"]["message-id"] = f"runner-{number}@mg.example.com"
    return verified(signed(data))


async def test_runner_keeps_limited_connections(engine):
    for number in range(2):
        await insert_document(engine, f"INV-{number}", f"<runner-{number}@mg.example.com>")
    runner = AsyncBatchRunner(engine, keep=1)

    results = await asyncio.gather(runner([delivered(0)], NOW), runner([delivered(1)], NOW))

    assert [result.outcome for [result] in results] == ["applied", "applied"]
    assert engine.pool.checkedout() == 1
    await runner.close()
    assert engine.pool.checkedout() == 0


async def test_runner_drops_timed_out_connection(engine, database_url, caplog):
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    # The runner's own engine gives up on a statement after 1 s.
    short_timeout_engine = create_async_engine(database_url, connect_args={"command_timeout": 1})
    runner = AsyncBatchRunner(short_timeout_engine, keep=2)
    try:
        async with engine.connect() as holder:
            await holder.begin()
            await holder.execute(text("SELECT id FROM documents WHERE id = 'INV-1' FOR UPDATE"))
            with pytest.raises(DatabaseUnavailable, match="TimeoutError"):
                await runner([verified(signed(fixture("delivered")))], NOW)
            assert short_timeout_engine.pool.checkedout() == 0
            # The posts are not tried one by one on a connection that timed out.
            assert [r.getMessage() for r in caplog.records if r.name.startswith("mgwebhook")] == []
            await holder.rollback()

        [result] = await runner([verified(signed(fixture("complained")))], NOW)
        assert isinstance(result, IngestResult)
        assert result.outcome == "applied"
        assert short_timeout_engine.pool.checkedout() == 1
        assert await status_of(engine, "INV-1") == "COMPLAINED"
    finally:
        await runner.close()
        await short_timeout_engine.dispose()


async def test_lost_connection_fails_whole_fallback(engine):
    """A connection lost while posts are applied one by one fails them all, not one each."""
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "CREATE FUNCTION end_session() RETURNS trigger AS $$ BEGIN "
                "IF NEW.recipient = 'gone@example.com' THEN "
                "PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
        )
        await connection.execute(
            text(
                "CREATE TRIGGER end_session BEFORE INSERT ON webhook_events "
                "FOR EACH ROW EXECUTE FUNCTION end_session()"
            )
        )
    webhooks = [
        verified(signed(fixture("delivered"))),
        verified(signed(fixture("complained", recipient="gone@example.com"))),
        verified(signed(fixture("failed_permanent"))),
    ]

    async with session_factory(engine)() as session:
        with pytest.raises(DBAPIError) as raised:
            async with session.begin():
                await session.run_sync(apply_each, webhooks, NOW)
    assert raised.value.connection_invalidated
    assert await status_of(engine, "INV-1") == "SENT"
