"""Graceful shutdown of `mgwebhook serve` on SIGTERM.

The test holds a database lock so that verified posts wait for their commit.
Once the server has read every request (its sockets have nothing left in their
receive queues), the test sends SIGTERM and then releases the lock.

aiohttp (3.14) stops reading from every connection when shutdown starts, so a
request whose body is still arriving at SIGTERM is not completed: it is
cancelled after server.shutdown_timeout_seconds and Mailgun retries it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from mgwebhook.samples import event_data, json_webhook
from tests.conftest import SIGNING_KEY
from tests.helpers import insert_document, status_of
from tests.reliability_support import (
    HOST,
    ServiceProcess,
    prepare_database,
    read_response,
    request_head,
    server_has_read,
    service_env,
    wait_for_close,
    wait_until,
    write_lock,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc/net/tcp").exists(), reason="reads socket queues from /proc/net/tcp"
    ),
]

WAITING_POSTS = 5


async def connection_refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except (ConnectionRefusedError, ConnectionResetError):
        # A reset comes from a connection caught while the listening socket closes.
        return True
    writer.close()
    return False


async def test_sigterm_commits_waiting_posts(database_url: str, tmp_path: Path):
    env = service_env(database_url)
    engine = await prepare_database(database_url, env)
    service = ServiceProcess(tmp_path / "serve.log", env)
    try:
        bodies = []
        for number in range(WAITING_POSTS):
            message_id = f"shutdown-{number}@mg.example.com"
            await insert_document(engine, f"INV-{number}", f"<{message_id}>")
            body = json_webhook(SIGNING_KEY, event_data("delivered", message_id))
            bodies.append(json.dumps(body).encode())
        await service.start_and_wait()

        async with write_lock(engine):
            streams = []
            for body in bodies:
                reader, writer = await asyncio.open_connection(HOST, service.port)
                writer.write(request_head(len(body)) + body)
                await writer.drain()
                streams.append((reader, writer))
            client_ports = [writer.get_extra_info("sockname")[1] for _, writer in streams]
            await wait_until(
                lambda: all(server_has_read(service.port, port) for port in client_ports),
                "the server has read every request",
            )
            service.send_signal(signal.SIGTERM)
            await wait_until(
                lambda: connection_refused(service.port), "new connections are refused"
            )
            assert service.running
        responses = await asyncio.gather(*(read_response(reader) for reader, _ in streams))

        assert [status for status, _ in responses] == [200] * WAITING_POSTS
        assert [json.loads(body) for _, body in responses] == [{"ok": True}] * WAITING_POSTS
        assert await service.wait_exit() == 0
        for number in range(WAITING_POSTS):
            assert await status_of(engine, f"INV-{number}") == "DELIVERED"
        assert "mgwebhook stopped" in service.output()
        assert "Traceback" not in service.output()
    finally:
        service.stop()
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_shutdown_timeout_cancels_stalled_request(database_url: str, tmp_path: Path):
    """A request whose body never comes is cancelled after server.shutdown_timeout_seconds."""
    env = service_env(
        database_url,
        MGWEBHOOK_SERVER_SHUTDOWN_TIMEOUT_SECONDS="1",
        MGWEBHOOK_SERVER_BODY_TIMEOUT_SECONDS="600",
    )
    engine = await prepare_database(database_url, env)
    service = ServiceProcess(tmp_path / "serve.log", env)
    try:
        await service.start_and_wait()
        # The head announces a body that never comes; 100 Continue shows the handler runs.
        reader, _writer = await asyncio.open_connection(HOST, service.port)
        _writer.write(request_head(100, expect_continue=True))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert interim.startswith(b"HTTP/1.1 100 Continue")

        service.send_signal(signal.SIGTERM)
        # Bounded well below the 30 s default and the 600 s body timeout, so
        # only the configured 1 s timeout can end the wait in time.
        assert await service.wait_exit(limit_seconds=20) == 0
        await wait_for_close(reader, limit_seconds=5)
        assert "mgwebhook stopped" in service.output()
    finally:
        service.stop()
        await engine.dispose()
