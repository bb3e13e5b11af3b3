"""`mgwebhook send-test` against a running server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from mgwebhook.db.schema import webhook_events
from mgwebhook.server.app import create_app
from mgwebhook.tracking import track_email
from tests.conftest import OTHER_KEY, SIGNING_KEY
from tests.event_support import cli_env, event_outcomes, invoke
from tests.helpers import WEBHOOK_PATH, audit_rows, status_of


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def server_url(aiohttp_server, engine, settings) -> str:
    app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    return str(server.make_url(WEBHOOK_PATH))


def send_env(database_url: str, key: bytes = SIGNING_KEY, **extra: str) -> dict[str, str]:
    return cli_env(database_url, MAILGUN_WEBHOOK_SIGNING_KEY=key.decode(), **extra)


async def stored(engine) -> list[tuple[str, str, str | None, str]]:
    """(event, payload_format, severity, outcome) of every stored event."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(
                webhook_events.c.event,
                webhook_events.c.payload_format,
                webhook_events.c.severity,
                webhook_events.c.outcome,
            ).order_by(webhook_events.c.id)
        )
        return [tuple(row) for row in rows]


async def test_send_test_updates_tracked_row(server_url, engine, database_url):
    await track_email(engine, "document", "INV-1", "<m1@mg.example.com>")

    result = await invoke(
        ["send-test", "delivered", "--message-id", "<m1@mg.example.com>", "--url", server_url],
        send_env(database_url),
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"Sent delivered for message id <m1@mg.example.com> to {server_url}",
        'HTTP 200: {"ok": true}',
    ]
    assert await status_of(engine, "INV-1") == "DELIVERED"
    assert await audit_rows(engine) == [
        ("document", "INV-1", "EMAIL_DELIVERED", "SENT", "DELIVERED", True)
    ]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["failed"], [("failed", "json", "permanent", "applied")]),
        (["failed", "--severity", "temporary"], [("failed", "json", "temporary", "applied")]),
        (["complained"], [("complained", "json", None, "applied")]),
        (["delivered", "--legacy"], [("delivered", "form", None, "applied")]),
        (["failed", "--legacy"], [("bounced", "form", None, "applied")]),
        (["complained", "--legacy"], [("complained", "form", None, "applied")]),
        # The server responds 200 to an open and stores nothing.
        (["opened"], []),
    ],
)
async def test_send_test_event_kinds(server_url, engine, database_url, arguments, expected):
    await track_email(engine, "tenant", "T-1", "m1@mg.example.com")

    result = await invoke(
        ["send-test", *arguments, "--message-id", "m1@mg.example.com", "--url", server_url],
        send_env(database_url),
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == 'HTTP 200: {"ok": true}'
    assert await stored(engine) == expected


async def test_send_test_random_message_id_is_unmatched(server_url, engine, database_url):
    result = await invoke(["send-test", "delivered", "--url", server_url], send_env(database_url))

    assert result.exit_code == 0, result.output
    first_line = result.stdout.splitlines()[0]
    assert first_line.startswith("Sent delivered for message id ")
    assert ".send-test@mg.example.com to " in first_line
    assert await event_outcomes(engine) == {1: "unmatched"}


async def test_send_test_wrong_key_is_rejected(server_url, engine, database_url):
    result = await invoke(
        ["send-test", "delivered", "--url", server_url], send_env(database_url, key=OTHER_KEY)
    )

    assert result.exit_code == 1
    status_line = result.stdout.splitlines()[-1]
    assert status_line.startswith("HTTP 401: ")
    assert json.loads(status_line.removeprefix("HTTP 401: ")) == {
        "ok": False,
        "error": "signature does not match any configured signing key",
    }
    assert await event_outcomes(engine) == {}
    assert OTHER_KEY.decode() not in result.output


async def test_send_test_default_url_from_server_settings(aiohttp_server, engine, settings):
    app = create_app(settings, [SIGNING_KEY], engine=engine, create_tables=False, reconcile=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    env = send_env(settings.database.url, MGWEBHOOK_SERVER_PORT=str(server.port))

    result = await invoke(["send-test", "complained"], env)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith(
        f" to http://127.0.0.1:{server.port}/v1/mailgun/webhook"
    )
    assert await event_outcomes(engine) == {1: "unmatched"}


async def test_send_test_missing_key(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path}/x.db", MAILGUN_WEBHOOK_SIGNING_KEY="")

    result = await invoke(["send-test", "delivered"], env)

    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: MAILGUN_WEBHOOK_SIGNING_KEY is not set, so webhook signatures cannot be verified."
    )


async def test_send_test_no_server(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1/mailgun/webhook"
    env = cli_env(f"sqlite:///{tmp_path}/x.db", MAILGUN_WEBHOOK_SIGNING_KEY="key-x")

    result = await invoke(["send-test", "delivered", "--url", url], env)

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: could not connect to {url}: no server is running at that URL; "
        "start one with `mgwebhook serve` or pass --url\n"
    )


async def test_send_test_legacy_has_no_temporary_failure(tmp_path):
    env = cli_env(f"sqlite:///{tmp_path}/x.db", MAILGUN_WEBHOOK_SIGNING_KEY="key-x")

    result = await invoke(["send-test", "failed", "--legacy", "--severity", "temporary"], env)

    assert result.exit_code == 1
    assert result.stderr == (
        "Error: legacy webhooks have no temporary failure event; "
        "drop --legacy or use --severity permanent\n"
    )


def test_served_process_reconciles_late_row(tmp_path: Path):
    """As a user runs it: serve, send an event, track the row later, wait for reconciliation."""
    port = free_port()
    database = tmp_path / "mgwebhook.db"
    env = {
        **os.environ,
        "MAILGUN_WEBHOOK_SIGNING_KEY": SIGNING_KEY.decode(),
        "MGWEBHOOK_DATABASE_URL": f"sqlite:///{database}",
        "MGWEBHOOK_SERVER_PORT": str(port),
        "MGWEBHOOK_RECONCILE_INTERVAL_SECONDS": "1",
    }

    def mgwebhook(*arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mgwebhook", *arguments],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )

    server = subprocess.Popen(
        [sys.executable, "-m", "mgwebhook", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        sent = None
        for _ in range(100):
            sent = mgwebhook("send-test", "delivered", "--message-id", "late@mg.example.com")
            if sent.returncode == 0:
                break
            time.sleep(0.1)
        assert sent is not None
        assert sent.returncode == 0, sent.stderr

        # The row appears after the webhook, written directly as the invoicing API does.
        with sqlite3.connect(database) as connection:
            connection.execute(
                "INSERT INTO documents (id, email_message_id, email_status) "
                "VALUES ('INV-1', '<late@mg.example.com>', 'SENT')"
            )

        status = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sqlite3.connect(database) as connection:
                status = connection.execute(
                    "SELECT email_status FROM documents WHERE id = 'INV-1'"
                ).fetchone()[0]
            if status == "DELIVERED":
                break
            time.sleep(0.2)
        assert status == "DELIVERED"

        history = mgwebhook("history", "INV-1", "--json")
        assert history.returncode == 0, history.stderr
        [record] = [json.loads(line) for line in history.stdout.splitlines()]
        assert [event["event_type"] for event in record["events"]] == ["EMAIL_DELIVERED"]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=10)
    assert server.returncode == 0
    assert "INFO mgwebhook.reconcile: reconciled stored event 1 (delivered" in output
    assert SIGNING_KEY.decode() not in output
