"""Slow and broken clients cannot hold `mgwebhook serve` up or make it fail.

The process runs with a 2 s keep-alive timeout, which also bounds the time to
send a complete request head, and a 2 s body timeout. Throughout each test a
real signed webhook still gets its 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.engine import create_engine
from mgwebhook.samples import event_data, json_webhook
from tests.conftest import SIGNING_KEY
from tests.reliability_support import (
    HOST,
    ServiceProcess,
    prepare_database,
    raise_open_file_limit,
    read_response,
    request_head,
    service_env,
    snapshot,
    wait_for_close,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

TIMEOUT_SECONDS = 2
# Every wait for the server to act on a timeout ends well within this bound.
CLOSE_LIMIT_SECONDS = 30
IDLE_CONNECTIONS = 1000


@pytest.fixture
async def service(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    env = service_env(
        database_url,
        MGWEBHOOK_SERVER_KEEPALIVE_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        MGWEBHOOK_SERVER_BODY_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        MGWEBHOOK_RECONCILE_INTERVAL_SECONDS="0",
    )
    engine = await prepare_database(database_url, env)
    process = ServiceProcess(tmp_path / "serve.log", env)
    try:
        await process.start_and_wait()
        yield process
    finally:
        process.stop()
        await engine.dispose()


@pytest.fixture
async def service_engine(service: ServiceProcess, database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the database of the running service."""
    current = create_engine(database_url)
    yield current
    await current.dispose()


def signed_body(label: str) -> bytes:
    data = event_data("delivered", f"{label}@mg.example.com")
    return json.dumps(json_webhook(SIGNING_KEY, data)).encode()


async def post_real_webhook(service: ServiceProcess, label: str) -> int:
    """Post a signed event for an untracked message id and return the status."""
    timeout = aiohttp.ClientTimeout(total=CLOSE_LIMIT_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            service.webhook_url,
            data=signed_body(label),
            headers={"Content-Type": "application/json"},
        ) as response,
    ):
        return response.status


async def test_stalled_request_head_is_closed(service: ServiceProcess):
    reader, writer = await asyncio.open_connection(HOST, service.port)
    writer.write(b"POST /v1/mailgun/webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    await writer.drain()

    assert await post_real_webhook(service, "during-stalled-head") == 200
    received = await wait_for_close(reader, CLOSE_LIMIT_SECONDS)
    assert received == b""
    assert service.running


async def test_dripping_request_head_is_cut_off(service: ServiceProcess):
    """A head sent one byte at a time is cut off, although each byte arrives in time."""
    head = b"POST /v1/mailgun/webhook HTTP/1.1\r\nX-Padding: " + b"a" * 4000 + b"\r\n\r\n"
    reader, writer = await asyncio.open_connection(HOST, service.port)
    sent = 0

    async def drip() -> None:
        nonlocal sent
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                sent += 1
                await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        assert await post_real_webhook(service, "during-drip") == 200
        await wait_for_close(reader, CLOSE_LIMIT_SECONDS)
        assert sent < len(head), "the whole head was sent before the server closed"
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
        writer.close()


async def test_half_body_is_answered_408(service: ServiceProcess, service_engine: AsyncEngine):
    before = await snapshot(service_engine)
    body = signed_body("half-body")
    reader, writer = await asyncio.open_connection(HOST, service.port)
    writer.write(request_head(len(body)) + body[: len(body) // 2])
    await writer.drain()

    assert await post_real_webhook(service, "during-half-body") == 200
    status, response_body = await asyncio.wait_for(read_response(reader), CLOSE_LIMIT_SECONDS)
    assert status == 408
    assert json.loads(response_body) == {
        "ok": False,
        "error": f"body was not received within {TIMEOUT_SECONDS} s",
    }

    after = await snapshot(service_engine)
    assert after["webhook_tokens"] == before["webhook_tokens"] + 1  # the real webhook only
    assert "outcome=body-timeout status=408" in service.output()


async def test_client_gone_mid_body_logs_no_traceback(service: ServiceProcess):
    body = signed_body("gone")
    reader, writer = await asyncio.open_connection(HOST, service.port)
    writer.write(request_head(len(body)) + body[:100])
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    await wait_until(
        lambda: "outcome=malformed status=400" in service.output(),
        "the service logs the broken request",
    )
    assert await post_real_webhook(service, "after-gone") == 200
    assert "Traceback" not in service.output()


async def test_thousand_idle_connections_do_not_block(service: ServiceProcess):
    # The sockets of both ends live in this test run or its child process.
    raise_open_file_limit(IDLE_CONNECTIONS + 1000)
    streams = []
    try:
        for _ in range(IDLE_CONNECTIONS // 100):
            streams += await asyncio.gather(
                *(asyncio.open_connection(HOST, service.port) for _ in range(100))
            )
        statuses = await asyncio.gather(
            *(post_real_webhook(service, f"among-idle-{number}") for number in range(20))
        )
        assert statuses == [200] * 20

        await asyncio.gather(
            *(wait_for_close(reader, CLOSE_LIMIT_SECONDS * 2) for reader, _ in streams)
        )
        assert service.running
        assert await post_real_webhook(service, "after-idle") == 200
    finally:
        for _, writer in streams:
            writer.close()
