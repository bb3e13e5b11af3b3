"""Tools for the reliability tests: a real `mgwebhook serve` process, a TCP proxy and waits.

Every server, proxy and socket listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mgwebhook.db.engine import create_engine
from mgwebhook.db.schema import documents, email_events, tenants, webhook_events, webhook_tokens
from tests.conftest import SIGNING_KEY, reset_database

HOST = "127.0.0.1"
WEBHOOK_PATH = "/v1/mailgun/webhook"
# Upper bound of every wait for a condition; reaching it fails the test.
WAIT_LIMIT_SECONDS = 60.0
POLL_SECONDS = 0.05


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int) -> int:
    """Return the first of `count` consecutive TCP ports of 127.0.0.1 that are all free now.

    The ports come from below Linux's default ephemeral range (32768 to 60999),
    so the local ends of outgoing connections made meanwhile do not take them.
    """
    chooser = random.Random()
    for _ in range(100):
        base = chooser.randrange(20_000, 32_000)
        with contextlib.ExitStack() as sockets:
            try:
                for port in range(base, base + count):
                    sock = sockets.enter_context(socket.socket())
                    sock.bind((HOST, port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports found between 20000 and 32000")


async def wait_until(
    condition: Callable[[], Any],
    description: str,
    limit_seconds: float = WAIT_LIMIT_SECONDS,
) -> None:
    """Poll `condition` (a function, sync or async) until it returns true, or fail the test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_seconds
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out after {limit_seconds:g} s waiting until {description}")
        await asyncio.sleep(POLL_SECONDS)


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to `needed`, or skip the test if the hard limit is lower.

    Child processes started afterwards inherit the new limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files but the hard RLIMIT_NOFILE is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def service_env(database_url: str, **settings: str) -> dict[str, str]:
    """Environment for an mgwebhook process: the test signing key, the database and `settings`.

    `settings` maps variable names (MGWEBHOOK_SERVER_BODY_TIMEOUT_SECONDS, ...) to values.
    MGWEBHOOK_* variables of the test run itself are left out.
    """
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith("MGWEBHOOK_")
    }
    return {
        **inherited,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
        "MGWEBHOOK_DATABASE_URL": database_url,
        **settings,
    }


def run_cli(arguments: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `python -m mgwebhook ARGUMENTS` to completion and return its output."""
    return subprocess.run(
        [sys.executable, "-m", "mgwebhook", *arguments],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT_LIMIT_SECONDS,
    )


async def prepare_database(database_url: str, env: dict[str, str]) -> AsyncEngine:
    """Empty the database, create the schema with `mgwebhook db upgrade` and return an engine."""
    await reset_database(database_url)
    upgrade = await asyncio.to_thread(run_cli, ["db", "upgrade"], env)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    return create_engine(database_url)


class ServiceProcess:
    """A `python -m mgwebhook serve` process whose stdout and stderr go to one file."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        port: int | None = None,
        arguments: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        self.env = env
        self.port = port if port is not None else free_port()
        # More `serve` options, such as ["--workers", "2"].
        self.arguments = list(arguments)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH

    def start(self) -> None:
        """Start the process. The log file keeps the output of earlier runs."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mgwebhook",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.arguments,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def start_and_wait(self) -> None:
        """Start the process and wait until GET /healthz returns 200."""
        self.start()
        await self.wait_ready()

    async def wait_ready(self) -> None:
        async def healthy() -> bool:
            if not self.running:
                pytest.fail(f"mgwebhook serve exited early:\n{self.output()}")
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(self.base_url + "/healthz") as response,
                ):
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_until(healthy, f"mgwebhook serve answers on port {self.port}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, limit_seconds: float = WAIT_LIMIT_SECONDS) -> int:
        """Wait until the process has exited and return its exit code."""
        await wait_until(lambda: not self.running, "mgwebhook serve exits", limit_seconds)
        assert self.process is not None
        return int(self.process.returncode)

    def stop(self) -> None:
        """Kill the process if it still runs (test cleanup)."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=WAIT_LIMIT_SECONDS)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class TcpProxy:
    """Forward connections from a port of 127.0.0.1 to a target address.

    `cut` closes the listening socket and aborts every forwarded connection, so
    clients see their connections drop and new connections refused. `restore`
    listens on the same port again.
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port if port is not None else free_port()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._forward, HOST, self.port, reuse_address=True
        )

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()

    @property
    def connection_count(self) -> int:
        """Connections forwarded at the moment (two transports each)."""
        return len(self._transports) // 2

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._transports.update({writer.transport, upstream_writer.transport})
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            for side in (writer, upstream_writer):
                self._transports.discard(side.transport)
                side.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def write_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold a lock that makes every ingest transaction wait until the block ends.

    On SQLite the engine's BEGIN IMMEDIATE takes the database write lock, which
    also blocks mgwebhook's own reads because they begin the same way. On
    PostgreSQL an EXCLUSIVE lock on webhook_tokens blocks the token insert only.
    """
    async with engine.connect() as connection:
        await connection.begin()
        if engine.dialect.name == "postgresql":
            await connection.execute(text("LOCK TABLE webhook_tokens IN EXCLUSIVE MODE"))
        try:
            yield
        finally:
            await connection.rollback()


def server_has_read(server_port: int, client_port: int) -> bool:
    """Return True once the server's end of a 127.0.0.1 connection has nothing left unread.

    It reads the receive queue of the server's socket from /proc/net/tcp
    (Linux), so the test learns that the server process has taken a request's
    bytes from the kernel without asking the server.
    """
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[1], 16) == 0
    return False


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """Row counts of mgwebhook's tables and the status of every document and tenant."""
    async with engine.connect() as connection:
        counts = {
            table.name: await connection.scalar(select(func.count()).select_from(table))
            for table in (webhook_tokens, webhook_events, email_events)
        }
        for table in (documents, tenants):
            rows = await connection.execute(
                select(table.c.id, table.c.email_status).order_by(table.c.id)
            )
            counts[table.name] = [tuple(row) for row in rows]
    return counts


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response with a Content-Length from a raw stream: (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return status, body


def request_head(body_length: int, *, expect_continue: bool = False) -> bytes:
    """Return the request line and headers of a JSON POST to the webhook path."""
    lines = [
        f"POST {WEBHOOK_PATH} HTTP/1.1",
        f"Host: {HOST}",
        "Content-Type: application/json",
        f"Content-Length: {body_length}",
    ]
    if expect_continue:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


async def wait_for_close(reader: asyncio.StreamReader, limit_seconds: float) -> bytes:
    """Read until the server closes the connection and return what it sent before that."""
    received = b""

    async def closed() -> bool:
        nonlocal received
        try:
            chunk = await asyncio.wait_for(reader.read(65536), POLL_SECONDS)
        except TimeoutError:
            return False
        except ConnectionError:
            return True
        received += chunk
        return chunk == b""

    await wait_until(closed, "the server closes the connection", limit_seconds)
    return received
