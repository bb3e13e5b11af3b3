"""GET /healthz and GET /readyz on a working, an unreachable and an empty database."""

from __future__ import annotations

import logging
import sqlite3

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import make_url

from mgwebhook.config import DatabaseSettings, Settings
from mgwebhook.db.engine import create_engine, create_schema
from mgwebhook.db.migrate import upgrade_schema
from mgwebhook.server import health
from mgwebhook.server.app import create_app
from mgwebhook.server.health import READY_REASON, check_ready
from tests.conftest import SIGNING_KEY, reset_database

# Nothing listens on port 9 (discard) of the test machine, so connecting is refused.
UNREACHABLE_URL = "postgresql+asyncpg://postgres@127.0.0.1:9/test"
HEALTH_LOGGER = "mgwebhook.server.health"
# mgwebhook's own tables; the documents and tenants tables are not checked.
ALL_TABLES = "documents, email_events, tenants, webhook_events, webhook_tokens"


async def client_for(aiohttp_client, url: str) -> TestClient:
    """Client of an app that creates its own engine on `url` and creates no tables."""
    settings = Settings(database=DatabaseSettings(url=url))
    app = create_app(settings, [SIGNING_KEY], create_tables=False, reconcile=False)
    return await aiohttp_client(app)


def health_records(caplog) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.name == HEALTH_LOGGER
    ]


async def test_healthz_is_ok(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"ok": True}


async def test_readyz_ok_on_good_database(client):
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"ok": True, "reason": READY_REASON}


async def test_check_ready_returns_pair(client):
    assert await check_ready(client.app) == (True, READY_REASON)


async def test_probes_write_no_log_lines(client, caplog):
    with caplog.at_level(logging.DEBUG, logger="mgwebhook"):
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
    assert [r for r in caplog.records if r.name.startswith("mgwebhook")] == []


async def test_readyz_503_on_unreachable_database(aiohttp_client, caplog):
    client = await client_for(aiohttp_client, UNREACHABLE_URL)
    with caplog.at_level(logging.INFO, logger=HEALTH_LOGGER):
        first = await client.get("/readyz")
        second = await client.get("/readyz")

    assert first.status == 503
    body = await first.json()
    assert body["ok"] is False
    assert body["reason"] == "database query failed (ConnectionRefusedError)"
    assert second.status == 503
    # The second failure has the same reason, so only the first is logged.
    records = health_records(caplog)
    assert len(records) == 1
    level, message = records[0]
    assert level == "WARNING"
    assert message.startswith("not ready: database query failed (ConnectionRefusedError) (")
    # The process is alive even though the database is not.
    assert (await client.get("/healthz")).status == 200


async def test_readyz_503_without_tables_then_recovers(aiohttp_client, database_url, caplog):
    await reset_database(database_url)
    client = await client_for(aiohttp_client, database_url)
    with caplog.at_level(logging.INFO, logger=HEALTH_LOGGER):
        missing = await client.get("/readyz")
        engine = create_engine(database_url)
        try:
            await create_schema(engine)
        finally:
            await engine.dispose()
        ready = await client.get("/readyz")

    assert missing.status == 503
    assert await missing.json() == {
        "ok": False,
        "reason": f"tables missing: {ALL_TABLES}; run `mgwebhook db upgrade`",
    }
    assert ready.status == 200
    assert await ready.json() == {"ok": True, "reason": READY_REASON}
    assert health_records(caplog) == [
        ("WARNING", f"not ready: tables missing: {ALL_TABLES}; run `mgwebhook db upgrade`"),
        ("INFO", "ready again after 1 failed readiness check(s)"),
    ]


async def test_readyz_503_with_one_table_missing(aiohttp_client, engine, database_url):
    async with engine.begin() as connection:
        await connection.exec_driver_sql("DROP TABLE webhook_tokens")
    client = await client_for(aiohttp_client, database_url)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "ok": False,
        "reason": "tables missing: webhook_tokens; run `mgwebhook db upgrade`",
    }


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_readyz_ignores_sqlite_write_lock(aiohttp_client, engine, database_url):
    """A writer holding the SQLite write lock does not delay the check: readers do not wait."""
    client = await client_for(aiohttp_client, database_url)
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("DELETE FROM webhook_tokens")
        response = await client.get("/readyz")
    finally:
        holder.rollback()
        holder.close()
    assert response.status == 200
    assert await response.json() == {"ok": True, "reason": READY_REASON}


async def test_readyz_503_on_timeout(client, monkeypatch):
    # With a limit of 0 s the timeout fires at the first await, on either database.
    monkeypatch.setattr(health, "READY_TIMEOUT_SECONDS", 0)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {"ok": False, "reason": "database query timed out after 0 s"}


async def test_readyz_503_when_schema_is_behind(aiohttp_client, database_url):
    await reset_database(database_url)
    engine = create_engine(database_url)
    try:
        await upgrade_schema(engine, "0001")
    finally:
        await engine.dispose()
    client = await client_for(aiohttp_client, database_url)
    response = await client.get("/readyz")
    assert response.status == 503
    assert await response.json() == {
        "ok": False,
        "reason": "schema revision is 0001, the code needs 0003; run `mgwebhook db upgrade`",
    }
