"""Database outage: 503 with Retry-After while PostgreSQL is unreachable, recovery after.

A TCP proxy run by the test sits between the service and PostgreSQL. Cutting
it aborts every open database connection and refuses new ones. Restoring it
listens on the same port again. To the service this looks like a database
restart or failover.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.engine import make_url

from mgwebhook.config import DatabaseSettings, Settings
from mgwebhook.server.app import create_app
from tests.conftest import SIGNING_KEY
from tests.helpers import (
    FIXTURE_MESSAGE_ID,
    WEBHOOK_PATH,
    audit_rows,
    fixture,
    insert_document,
    signed,
    status_of,
)
from tests.reliability_support import (
    ServiceProcess,
    TcpProxy,
    prepare_database,
    service_env,
    wait_until,
)

pytestmark = pytest.mark.postgresql

UNAVAILABLE_BODY = {"ok": False, "error": "database unavailable; retry later"}


def proxied(url: str, proxy: TcpProxy) -> str:
    """Return `url` with the proxy's address in place of the database server's."""
    moved = make_url(url).set(host="127.0.0.1", port=proxy.port)
    return moved.render_as_string(hide_password=False)


def proxy_for(url: str) -> TcpProxy:
    parsed = make_url(url)
    return TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)


async def assert_unavailable(status: int, headers: Any, text: str) -> None:
    assert status == 503
    assert int(headers[hdrs.RETRY_AFTER]) > 0
    assert json.loads(text) == UNAVAILABLE_BODY
    assert "Traceback" not in text


async def proxied_app(database_url: str) -> tuple[TcpProxy, web.Application]:
    """Start a proxy to the database; return it and an app that connects through it."""
    proxy = proxy_for(database_url)
    await proxy.start()
    settings = Settings(database=DatabaseSettings(url=proxied(database_url, proxy)))
    return proxy, create_app(settings, [SIGNING_KEY], create_tables=False, reconcile=False)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_cut_database_gives_503_then_recovers(engine, database_url):
    proxy, app = await proxied_app(database_url)
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    try:
        async with TestClient(TestServer(app)) as client:
            first = await client.post(WEBHOOK_PATH, json=signed(fixture("delivered")))
            assert first.status == 200
            assert (await client.get("/readyz")).status == 200

            await proxy.cut()
            failed = signed(fixture("failed_permanent"))
            for _ in range(3):
                response = await client.post(WEBHOOK_PATH, json=failed)
                await assert_unavailable(response.status, response.headers, await response.text())
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/healthz")).status == 200
            assert await status_of(engine, "INV-1") == "DELIVERED"

            await proxy.restore()
            # The first request after the restore succeeds: no stale pooled connection is used.
            retried = await client.post(WEBHOOK_PATH, json=failed)
            assert retried.status == 200
            assert await retried.json() == {"ok": True}
            assert (await client.get("/readyz")).status == 200
        assert await status_of(engine, "INV-1") == "FAILED"
        assert [row[2] for row in await audit_rows(engine)] == ["EMAIL_DELIVERED", "EMAIL_FAILED"]
    finally:
        await proxy.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_pool_replaces_dropped_idle_connections(engine, database_url):
    """Connections that died while idle are replaced, and no post fails."""
    proxy, app = await proxied_app(database_url)
    for number in range(8):
        await insert_document(engine, f"INV-{number}", f"<pool-{number}@mg.example.com>")

    def delivered(number: int) -> dict[str, Any]:
        data = fixture("delivered", id=f"pool-delivered-{number}")
        data["message"]["headers"]["message-id"] = f"pool-{number}@mg.example.com"
        return signed(data)

    try:
        async with TestClient(TestServer(app)) as client:
            responses = await asyncio.gather(
                *(client.post(WEBHOOK_PATH, json=delivered(number)) for number in range(4))
            )
            assert [response.status for response in responses] == [200] * 4
            assert proxy.connection_count > 0

            await proxy.cut()
            await proxy.restore()
            for number in range(4, 8):
                response = await client.post(WEBHOOK_PATH, json=delivered(number))
                assert response.status == 200, await response.text()
        for number in range(8):
            assert await status_of(engine, f"INV-{number}") == "DELIVERED"
    finally:
        await proxy.close()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_lost_writer_connection_retries_batch(engine, database_url, caplog):
    """The writer's kept connection dies while idle; the next batch runs on a new one."""
    proxy, app = await proxied_app(database_url)
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    try:
        async with TestClient(TestServer(app)) as client:
            # One post at a time, so the writers keep one connection between batches.
            first = await client.post(WEBHOOK_PATH, json=signed(fixture("delivered")))
            assert first.status == 200

            await proxy.cut()
            await proxy.restore()
            caplog.clear()
            second = await client.post(WEBHOOK_PATH, json=signed(fixture("complained")))
            assert second.status == 200
            assert await second.json() == {"ok": True}
        lost = [
            record.getMessage()
            for record in caplog.records
            if record.name == "mgwebhook.server.writer"
        ]
        assert len(lost) == 1
        assert lost[0].startswith("database connection lost (")
        assert lost[0].endswith("); applying the batch of 1 posts again on a new connection")
        assert await status_of(engine, "INV-1") == "COMPLAINED"
        assert [row[2] for row in await audit_rows(engine)] == [
            "EMAIL_DELIVERED",
            "EMAIL_COMPLAINED",
        ]
    finally:
        await proxy.close()


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_process_without_database_stays_up(database_url: str, tmp_path: Path):
    """A process started while nothing listens at the database address returns 503 until then."""
    proxy = proxy_for(database_url)
    engine = await prepare_database(database_url, service_env(database_url))
    await insert_document(engine, "INV-1", FIXTURE_MESSAGE_ID)
    service = ServiceProcess(tmp_path / "serve.log", service_env(proxied(database_url, proxy)))
    delivered = json.dumps(signed(fixture("delivered"))).encode()
    complained = json.dumps(signed(fixture("complained"))).encode()
    try:
        await service.start_and_wait()
        async with aiohttp.ClientSession() as session:

            async def post(body: bytes) -> tuple[int, Any, str]:
                async with session.post(
                    service.webhook_url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    return response.status, response.headers, await response.text()

            async def ready_status() -> int:
                async with session.get(service.base_url + "/readyz") as response:
                    return response.status

            await assert_unavailable(*await post(delivered))
            assert await ready_status() == 503

            await proxy.start()
            await wait_until(
                lambda: _equals(ready_status(), 200), "/readyz answers 200 with the database up"
            )
            assert (await post(delivered))[0] == 200
            assert await status_of(engine, "INV-1") == "DELIVERED"

            await proxy.cut()
            await assert_unavailable(*await post(complained))
            assert await ready_status() == 503
            await proxy.restore()
            assert (await post(complained))[0] == 200
            assert await ready_status() == 200

        assert service.running
        assert await status_of(engine, "INV-1") == "COMPLAINED"
        assert "Traceback" not in service.output()
    finally:
        service.stop()
        await proxy.close()
        await engine.dispose()


async def _equals(awaitable: Any, expected: Any) -> bool:
    return await awaitable == expected
